"""The model contract (docs/design.md, "The model contract"), checked in one place.

Every model the package runs is a TorchScript module with
``forward(x, render_steps: int = 2, interpolate_ins: bool = True) -> Dict[str, Tensor]`` whose
outputs are ``sem_logits`` (N, C, H, W), ``ctr_hmp`` (N, 1, H, W) and ``offsets``
(N, 2, H, W) at full resolution when ``interpolate_ins`` is True. :func:`probe_model` checks
that with a short forward pass on small random inputs, at registration and at load, and
reports each breach as one :class:`~empanada_napari.core.errors.ModelError` that names it.
The same forward passes tell whether the model gives the same answers in a batch (published
MitoNet models were only ever run with N = 1), so loading a model runs it once, not twice.

torch is imported inside the functions: this module is imported at plugin load.
"""

from __future__ import annotations

import inspect
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError, ModelFileError
from .config import check_padding_factor

if TYPE_CHECKING:
    import torch

__all__ = [
    "OUTPUT_KEYS",
    "check_model_file",
    "check_torchscript",
    "load_torchscript",
    "probe_model",
]

OUTPUT_KEYS = ("sem_logits", "ctr_hmp", "offsets")
_CONTRACT = "forward(x, render_steps: int = 2, interpolate_ins: bool = True)"
#: Output channels of the instance heads (the semantic head has one per class).
_CHANNELS = {"ctr_hmp": 1, "offsets": 2}


def short_reason(exc: BaseException) -> str:
    """The one line of an exception's message that says why (for one-line errors)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    # A TorchScript error starts with a banner and a traceback; its reason is the last line.
    return lines[-1] if "TorchScript" in lines[0] else lines[0]


def _quantized_engine_missing() -> bool:
    import torch

    return not set(torch.backends.quantized.supported_engines) & {"fbgemm", "x86"}


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load a TorchScript file on ``device`` in eval mode; ModelFileError says why not.

    A truncated download or an HTML error page is not a zip at all: that is said plainly
    instead of passing on torch's long C++ message.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path.name} is corrupt, truncated or not a TorchScript archive (an incomplete "
            "download, an HTML page or another kind of file)"
        )
    try:
        with warnings.catch_warnings():
            # Recent torch deprecates TorchScript loudly; loading a model is not the place.
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError, ValueError, zip errors...
        raise ModelFileError(
            f"{path.name} cannot be loaded as TorchScript: the file is corrupt, truncated or "
            f"not a TorchScript export ({type(exc).__name__}: {short_reason(exc)})"
        ) from exc
    module.eval()
    return module


def check_torchscript(path: str | Path, *, quantized: bool = False) -> None:
    """Raise ModelFileError unless ``path`` is a TorchScript file that torch can load on CPU.

    Quantized (fbgemm) models are only checked structurally where torch has no fbgemm/x86
    engine (e.g. Apple silicon), since loading them there can fail for a sound file.
    """
    path = Path(path)
    if quantized and path.is_file() and zipfile.is_zipfile(path) and _quantized_engine_missing():
        _check_zip_structure(path)
        return
    load_torchscript(path, "cpu")


def _check_zip_structure(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            has_code = any(n.endswith("constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path.name} is a corrupt archive: {exc}") from exc
    if bad is not None or not has_code:
        raise ModelFileError(f"{path.name} is a corrupt or non-TorchScript archive")


def check_model_file(
    path: str | Path, config: Mapping[str, Any], *, quantized: bool = False, name: str = ""
) -> None:
    """Check a model file against the whole contract: it loads, and a probe forward passes.

    Used at registration, so that a model that would fail at its first use is refused then.
    """
    path = Path(path)
    if quantized and path.is_file() and zipfile.is_zipfile(path) and _quantized_engine_missing():
        _check_zip_structure(path)  # cannot run here; checked when loaded on an x86 CPU
        return
    module = load_torchscript(path, "cpu")
    padding = config.get("padding_factor") or getattr(module, "padding_factor", 16)
    padding = check_padding_factor(padding, f"model {name or path.stem}")
    probe_model(module, padding, config.get("labels") or [1], name=name or path.stem)


# --------------------------------------------------------------------------- the probe


def _forward_parameters(module: Any) -> list[tuple[str, bool]] | None:
    """(name, has default) of forward's parameters after ``self``; None if unknown."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is not None:  # a TorchScript method
        args = list(schema.arguments)[1:]
        return [(a.name, a.has_default_value()) for a in args]
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError, AttributeError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return None  # forward(*args) can take anything
    return [(p.name, p.default is not p.empty) for p in params if p.kind in kinds]


def _check_signature(module: Any, name: str) -> None:
    params = _forward_parameters(module)
    if params is None:
        return
    if len(params) < 3:
        got = ", ".join(p for p, _ in params) or "no arguments"
        raise ModelError(
            f"model {name}: forward takes ({got}); the MitoNet contract is {_CONTRACT}, "
            "so this is not a MitoNet-compatible model"
        )
    extra = [p for p, has_default in params[3:] if not has_default]
    if extra:
        raise ModelError(
            f"model {name}: forward needs more arguments than {_CONTRACT} "
            f"({', '.join(extra)} without defaults)"
        )


def _check_outputs(out: Any, n: int, size: int, labels: Sequence[int], name: str) -> None:
    import torch

    if not isinstance(out, Mapping):
        raise ModelError(
            f"model {name}: forward returned {type(out).__name__}; the MitoNet contract "
            f"returns a dict with {', '.join(OUTPUT_KEYS)}"
        )
    missing = [k for k in OUTPUT_KEYS if k not in out]
    if missing:
        raise ModelError(
            f"model {name}: output lacks {', '.join(repr(k) for k in missing)} (it has "
            f"{', '.join(repr(k) for k in out) or 'nothing'}); a MitoNet-contract model "
            f"returns {', '.join(OUTPUT_KEYS)}"
        )
    for key in OUTPUT_KEYS:
        value = out[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ModelError(f"model {name}: output '{key}' is not a floating-point tensor")
        channels = _CHANNELS.get(key)
        expected = f"({n}, {channels or 'C'}, {size}, {size})"
        shape = tuple(value.shape)
        if value.ndim != 4 or shape[0] != n or shape[2:] != (size, size):
            raise ModelError(
                f"model {name}: output '{key}' has shape {shape} for an input of shape "
                f"({n}, 1, {size}, {size}); expected {expected} (full resolution with "
                "render_steps=2 and interpolate_ins=True)"
            )
        if channels is not None and shape[1] != channels:
            raise ModelError(
                f"model {name}: output '{key}' has {shape[1]} channels; expected {channels}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ModelError(
                f"model {name}: output '{key}' has NaN or infinite values on a test input"
            )
    classes = out["sem_logits"].shape[1]
    labels = list(labels)
    # One channel is a sigmoid for the single label; several are a softmax whose channel
    # index is the label (channel 0 = background).
    if (classes == 1 and len(labels) != 1) or (classes > 1 and max(labels) >= classes):
        raise ModelError(
            f"model {name}: 'sem_logits' has {classes} channel(s), which does not fit the "
            f"config's labels {labels} (one channel: one label; several: channel k is label k)"
        )


def _call(module: Any, x: Any, name: str) -> Any:
    try:
        return module(x, 2, True)
    except Exception as exc:  # noqa: BLE001 - any failure is a contract breach
        raise ModelError(
            f"model {name} failed on a test input of shape {tuple(x.shape)}: "
            f"{type(exc).__name__}: {short_reason(exc)}"
        ) from exc


def probe_model(
    module: Any,
    padding_factor: int,
    labels: Sequence[int] = (1,),
    *,
    device: str | torch.device | None = None,
    name: str = "",
) -> bool:
    """Check the contract on two small random inputs; return whether batches are safe.

    Raises ModelError naming the first breach (signature, output keys, shapes, ranks,
    channels, non-finite values, class count against ``labels``). The two inputs are then
    run together: the model "supports batches" when that gives the same outputs.
    """
    import torch

    name = name or "model"
    _check_signature(module, name)
    size = max(64, int(padding_factor))
    if device is None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, size, size, generator=gen).to(device)
    with torch.inference_mode():
        singles = []
        for i in range(2):
            out = _call(module, x[i : i + 1], name)
            _check_outputs(out, 1, size, labels, name)
            singles.append(out)
        try:
            both = module(x, 2, True)
        except Exception:  # noqa: BLE001 - any failure on N = 2 means "run N = 1"
            return False
    return _same_per_image(both, singles)


def _same_per_image(both: Any, singles: list) -> bool:
    if not isinstance(both, Mapping):
        return False
    for key in OUTPUT_KEYS:
        batch_out = both.get(key)
        if batch_out is None or batch_out.ndim != 4 or batch_out.shape[0] != len(singles):
            return False
        for i, single in enumerate(singles):
            ref = single[key][0]
            tol = 1e-3 * (1.0 + float(ref.abs().max()))
            if batch_out[i].shape != ref.shape or (batch_out[i] - ref).abs().max() > tol:
                return False
    return True
