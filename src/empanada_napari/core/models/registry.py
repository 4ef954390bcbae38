"""Registry of segmentation models: built-in entries, user models, downloads and archives.

The work is split by job; this module gathers the public names in one place:

* :mod:`.config` reads and validates model configs (:class:`ModelEntry`);
* :mod:`.store` keeps built-in and user models (:class:`ModelRegistry`, :func:`get_registry`);
* :mod:`.download` downloads files (https only, checksums, deadline, size cap);
* :mod:`.archives` exports and imports ``.empanada`` archives;
* :mod:`.contract` checks model files against the MitoNet contract.

Nothing here imports torch, pooch or requests at import time (the plugin imports it on load).
"""

from __future__ import annotations

from .archives import ARCHIVE_SUFFIX
from .config import ModelEntry
from .contract import check_torchscript
from .download import DOWNLOAD_TIMEOUT
from .store import HOME_ENV, ModelRegistry, builtin_config_dir, default_home, get_registry

__all__ = [
    "ARCHIVE_SUFFIX",
    "DOWNLOAD_TIMEOUT",
    "HOME_ENV",
    "ModelEntry",
    "ModelRegistry",
    "builtin_config_dir",
    "check_torchscript",
    "default_home",
    "get_registry",
]
