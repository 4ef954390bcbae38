"""Neural network architectures of the MitoNet family and a compact CPU model.

Every model follows one contract (see :class:`.panoptic_deeplab.PanopticModel`):
``forward(x, render_steps=2, interpolate_ins=True) -> dict[str, Tensor]`` on (N, 1, H, W)
inputs whose H and W are multiples of ``model.padding_factor``, and compiles with
``torch.jit.script``. Build one by name with :func:`build_model`.
"""

from torch import nn

from ..catalog import ARCHITECTURES, Architecture
from .compact import PanopticLite
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
    "ENCODERS",
    "Architecture",
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


def list_architectures() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(ARCHITECTURES)


def list_encoders(architecture: str) -> list[str]:
    """Encoder names accepted by ``architecture``."""
    return list(_record(architecture).encoders)


def _record(architecture: str) -> Architecture:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}; valid architectures: "
            f"{', '.join(list_architectures())}"
        )
    return ARCHITECTURES[architecture]


def build_model(
    architecture: str, encoder: str | None = None, num_classes: int = 1, **kwargs: object
) -> nn.Module:
    """Build an untrained model by architecture name.

    ``encoder`` defaults to the architecture's (``resnet50`` for the MitoNet architectures,
    ``resnet18`` for ``panoptic_lite``). Other keyword arguments go to the architecture
    (``pointrend``, ``train_num_points``, ``subdivision_num_points``, ``output_stride``,
    ``fpn_channels``, ``width`` ...). Unknown architecture or encoder names raise ``ValueError``.
    """
    record = _record(architecture)
    encoder = encoder or record.default_encoder
    if encoder not in record.encoders:
        raise ValueError(
            f"Unknown encoder {encoder!r} for {architecture}; valid encoders: "
            f"{', '.join(record.encoders)}"
        )
    return record.model_class()(encoder=encoder, num_classes=num_classes, **kwargs)
