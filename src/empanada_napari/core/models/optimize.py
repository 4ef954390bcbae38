"""One-time preparation of a loaded TorchScript model for inference (issue 19).

:func:`prepare_for_inference` freezes the scripted module on the CPU: parameters become
constants, so TorchScript folds each BatchNorm into the convolution before it and drops the
attribute look-ups. Measured on the bundled model (2 CPU cores, docs/benchmarks.md): the
forward pass takes about 0.65-0.75 of the time, and the first calls (profiling executor
warm-up) cost less. Outputs change by float rounding only (max 1.4e-4 on the logits of a
768 x 1024 image); tests/core/test_optimize.py checks the labels on real EM. Not applied on other
devices (unmeasured there) nor to quantized models; a module that cannot be frozen is
returned as it is.
"""

from __future__ import annotations

from typing import Any

#: Attributes code reads from a loaded module (``padding_factor`` by the loader, the rest by
#: training and export); freezing would drop them otherwise.
KEPT_ATTRIBUTES = (
    "padding_factor",
    "architecture",
    "encoder_name",
    "num_classes",
    "train_num_points",
    "subdivision_num_points",
)


def prepare_for_inference(module: Any, device: Any) -> Any:
    """Return ``module`` ready for fast inference on ``device`` (frozen on the CPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        return module
    if not isinstance(module, torch.jit.ScriptModule) or module.training:
        return module
    keep = [name for name in KEPT_ATTRIBUTES if hasattr(module, name)]
    try:
        return torch.jit.freeze(module, preserved_attrs=keep)
    except Exception:  # noqa: BLE001 - an optimisation only: keep the model as loaded
        return module
