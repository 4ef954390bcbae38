"""Model registry and loading; cheap to import (torch is only imported when used)."""

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

__all__ = [
    "ARCHIVE_SUFFIX",
    "HOME_ENV",
    "ModelEntry",
    "ModelRegistry",
    "builtin_config_dir",
    "check_torchscript",
    "default_home",
    "get_registry",
]
