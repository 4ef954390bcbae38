"""Neural network architectures of the MitoNet family and a compact CPU model.

Every model follows one contract (see :class:`.panoptic_deeplab.PanopticModel`):
``forward(x, render_steps=2, interpolate_ins=True) -> dict[str, Tensor]`` on (N, 1, H, W)
inputs whose H and W are multiples of ``model.padding_factor``, and compiles with
``torch.jit.script``. Build one by name with :func:`build_model`.
"""

from collections.abc import Callable

from torch import nn

from .compact import LITE_ENCODERS, PanopticLite
from .panoptic_bifpn import PanopticBiFPNPR
from .panoptic_deeplab import PanopticDeepLabPR, PanopticModel
from .pointrend import point_sample
from .resnet import (
    ENCODERS,
    adapt_resnet_state_dict,
    count_parameters,
    encoder_stage_modules,
    encoder_stages,
    set_encoder_trainable,
)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ENCODERS",
    "ENCODERS",
    "PanopticBiFPNPR",
    "PanopticDeepLabPR",
    "PanopticLite",
    "PanopticModel",
    "adapt_resnet_state_dict",
    "build_model",
    "count_parameters",
    "encoder_stage_modules",
    "encoder_stages",
    "list_architectures",
    "list_encoders",
    "point_sample",
    "set_encoder_trainable",
]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "panoptic_deeplab_pr": PanopticDeepLabPR,
    "panoptic_bifpn_pr": PanopticBiFPNPR,
    "panoptic_lite": PanopticLite,
}

# encoder used when build_model() is not given one
DEFAULT_ENCODERS: dict[str, str] = {
    "panoptic_deeplab_pr": "resnet50",
    "panoptic_bifpn_pr": "resnet50",
    "panoptic_lite": "resnet18",
}

_VALID_ENCODERS: dict[str, tuple[str, ...]] = {
    "panoptic_deeplab_pr": ENCODERS,
    "panoptic_bifpn_pr": ENCODERS,
    "panoptic_lite": LITE_ENCODERS,
}


def list_architectures() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(ARCHITECTURES)


def list_encoders(architecture: str) -> list[str]:
    """Encoder names accepted by ``architecture``."""
    _check_architecture(architecture)
    return list(_VALID_ENCODERS[architecture])


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; valid architectures: "
            f"{', '.join(list_architectures())}"
        )


def build_model(
    architecture: str, encoder: str | None = None, num_classes: int = 1, **kwargs: object
) -> nn.Module:
    """Build an untrained model by architecture name.

    ``encoder`` defaults to ``resnet50`` for the MitoNet architectures and ``resnet18`` for
    ``panoptic_lite``. Other keyword arguments go to the architecture (``pointrend``,
    ``train_num_points``, ``subdivision_num_points``, ``output_stride``, ``fpn_channels``,
    ``width`` ...). Unknown architecture or encoder names raise ``ValueError``.
    """
    _check_architecture(architecture)
    if encoder is None:
        encoder = DEFAULT_ENCODERS[architecture]
    valid = _VALID_ENCODERS[architecture]
    if encoder not in valid:
        raise ValueError(
            f"Unknown encoder {encoder!r} for {architecture}; valid encoders: {', '.join(valid)}"
        )
    return ARCHITECTURES[architecture](encoder=encoder, num_classes=num_classes, **kwargs)
