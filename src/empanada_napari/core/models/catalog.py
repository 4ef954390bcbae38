"""The architectures the package can build: one record each, readable without torch.

The command line takes its ``train --architecture/--encoder`` choices and help from here, and
:func:`.architectures.build_model` builds from the same records, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARCHITECTURES", "LITE_ENCODERS", "RESNET_ENCODERS", "Architecture", "all_encoders"]

#: ResNet layouts the MitoNet architectures accept (see :mod:`.architectures.resnet`).
RESNET_ENCODERS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
#: Layouts of the compact model's narrow encoder.
LITE_ENCODERS: tuple[str, ...] = ("resnet18", "resnet34")


@dataclass(frozen=True)
class Architecture:
    """One buildable architecture: where its class lives, its encoders, a line of help."""

    name: str
    module: str  # module of :mod:`.architectures` that defines the class
    class_name: str
    encoders: tuple[str, ...]
    default_encoder: str
    summary: str

    def model_class(self) -> type:
        """The architecture's ``nn.Module`` class (imports torch)."""
        from importlib import import_module

        return getattr(import_module(f"{__package__}.architectures.{self.module}"), self.class_name)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "panoptic_lite",
            "compact",
            "PanopticLite",
            LITE_ENCODERS,
            "resnet18",
            "compact model (about 3 M parameters) that trains and runs on a CPU",
        ),
        Architecture(
            "panoptic_deeplab_pr",
            "panoptic_deeplab",
            "PanopticDeepLabPR",
            RESNET_ENCODERS,
            "resnet50",
            "MitoNet_v1's Panoptic-DeepLab + PointRend (55 M parameters with ResNet-50)",
        ),
        Architecture(
            "panoptic_bifpn_pr",
            "panoptic_bifpn",
            "PanopticBiFPNPR",
            RESNET_ENCODERS,
            "resnet50",
            "MitoNet_v1_mini's Panoptic-BiFPN + PointRend (27 M parameters with ResNet-50)",
        ),
    )
}


def all_encoders() -> list[str]:
    """Every encoder name some architecture accepts."""
    return sorted({e for a in ARCHITECTURES.values() for e in a.encoders})
