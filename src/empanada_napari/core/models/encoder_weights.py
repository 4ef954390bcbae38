"""Pre-trained encoder weights (CEM1.5M SwAV ResNet-50) for training from scratch.

Checkpoints are read with ``torch.load(weights_only=True)``: a state dict of tensors (with
plain numbers, strings and dicts around it) is all that is needed, and a file that needs
anything else is refused instead of unpickled, because unpickling can run arbitrary code.
URLs are downloaded by the registry's one download function (https only, checksum recorded
on first use, cached under a name derived from the URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError, ModelFileError
from .config import MITONET_NORMS, file_url_to_path, url_scheme

if TYPE_CHECKING:
    from torch import nn

    from .store import ModelRegistry

__all__ = ["CEM_SHA256", "CEM_URL", "encoder_weights_file", "load_encoder_weights"]

CEM_URL = (
    "https://zenodo.org/record/6453160/files/"
    "cem1.5m_swav_resnet50_200ep_balanced.pth.tar?download=1"
)
#: The CEM1.5M file has no published SHA-256 (and Zenodo cannot be reached from where this
#: was written), so the registry records the hash of the first download and later downloads
#: must match it.
CEM_SHA256: str | None = None
_ALIASES = {"cem1.5m": (CEM_URL, CEM_SHA256)}


def _read_checkpoint(path: Path, source: str) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, zip errors, EOF...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFileError(
            f"Could not read encoder weights {source}: it is not a plain checkpoint of tensors "
            "(other pickled files are not opened, since loading them can run code; "
            f"{reason[:200]})"
        ) from err


def encoder_weights_file(
    source: str | Path, *, registry: ModelRegistry | None = None, progress: Any = True
) -> Path:
    """The local file of ``source``: ``"cem1.5m"``, an https/file URL, or a path."""
    from .store import get_registry

    text = str(source)
    url, sha256 = _ALIASES.get(text.lower(), (text, None))
    scheme = url_scheme(url)
    if scheme == "file":
        path = file_url_to_path(url)
    elif scheme:  # https is downloaded; http and anything else are refused there
        registry = registry or get_registry()
        return registry.retrieve(
            url,
            sha256=sha256,
            verify=lambda p: _read_checkpoint(p, text),
            progress=progress,
        )
    else:
        path = Path(url).expanduser()
    if not path.is_file():
        raise ModelFileError(f"Encoder weights {path} do not exist.")
    return path


def load_encoder_weights(
    module: nn.Module, source: str | Path, *, registry: ModelRegistry | None = None
) -> dict[str, float]:
    """Load CEM1.5M-style ResNet weights into ``module.encoder``; return their norms.

    ``source`` is a checkpoint path, an https URL (downloaded into the model cache) or
    ``"cem1.5m"``. Keys are plain ResNet names (``module.`` prefixes stripped, ``fc.*``
    dropped); a single-channel first conv is required.
    """
    path = encoder_weights_file(source, registry=registry)
    ckpt = _read_checkpoint(path, str(source))
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise ModelError(f"Encoder weights {source} hold no state dict of tensors.")
    cleaned = {}
    for key, value in state.items():
        key = str(key).removeprefix("module.").removeprefix("encoder.")
        if key.startswith("fc."):
            continue
        cleaned[key] = value
    try:
        missing, unexpected = module.encoder.load_state_dict(cleaned, strict=False)
    except RuntimeError as err:  # tensor size mismatches
        lines = str(err).splitlines()
        raise ModelError(
            f"Encoder weights {source} do not fit this encoder (different widths or depth): "
            f"{lines[1].strip() if len(lines) > 1 else err}"
        ) from err
    if unexpected or len(missing) > 0:
        raise ModelError(
            f"Encoder weights do not fit this encoder: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )
    norms = ckpt.get("norms") if isinstance(ckpt, dict) else None
    if isinstance(norms, dict) and "mean" in norms:
        return {"mean": float(norms["mean"]), "std": float(norms["std"])}
    return dict(MITONET_NORMS)
