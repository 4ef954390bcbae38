"""Models: the registry, loading, names and network builders, through one public face.

Code outside this package imports from ``empanada_napari.core.models`` only; the modules
behind it (registry and its store, config parsing, loading, archives, downloads, the
architectures) can move without touching their users. Cheap to import: torch is imported
where it is used, and the network builders (which need it) are loaded on first access.
"""

from importlib import import_module
from typing import Any

from .archives import archive_model_name
from .catalog import ARCHITECTURES, all_encoders
from .config import MITONET_NORMS, check_name
from .encoder_weights import CEM_URL, load_encoder_weights
from .loading import (
    LoadedModel,
    default_model_name,
    load_model,
    load_torchscript,
    resolve_model,
)
from .naming import free_name, name_problem
from .registry import (
    ARCHIVE_SUFFIX,
    HOME_ENV,
    ModelEntry,
    ModelRegistry,
    builtin_config_dir,
    check_torchscript,
    default_home,
    get_registry,
)

#: Names that need torch, loaded from their module on first access (PEP 562).
_LAZY = {
    "build_model": "architectures",
    "list_architectures": "architectures",
    "list_encoders": "architectures",
    "encoder_stage_modules": "architectures.resnet",
    "point_sample": "architectures.pointrend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "ARCHIVE_SUFFIX",
    "CEM_URL",
    "HOME_ENV",
    "MITONET_NORMS",
    "LoadedModel",
    "ModelEntry",
    "ModelRegistry",
    "all_encoders",
    "archive_model_name",
    "build_model",
    "builtin_config_dir",
    "check_name",
    "check_torchscript",
    "default_home",
    "default_model_name",
    "encoder_stage_modules",
    "free_name",
    "get_registry",
    "list_architectures",
    "list_encoders",
    "load_encoder_weights",
    "load_model",
    "load_torchscript",
    "name_problem",
    "point_sample",
    "resolve_model",
]
