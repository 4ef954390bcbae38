"""The napari-free library: models, inference, training, metrics and I/O.

Nothing under ``empanada_napari.core`` imports napari, Qt or magicgui, so the same code runs in
scripts, the CLI and on dask workers. Names below are imported lazily (torch is heavy).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Engine2D": "empanada_napari.core.inference.engine",
    "segment_2d": "empanada_napari.core.inference.engine",
    "InferenceSettings": "empanada_napari.core.inference.engine",
    "segment_volume": "empanada_napari.core.inference.chunked",
    "segment_stack_3d": "empanada_napari.core.inference.stack",
    "segment_ortho": "empanada_napari.core.inference.ortho",
    "load_model": "empanada_napari.core.models.loading",
    "get_registry": "empanada_napari.core.models.registry",
    "ModelRegistry": "empanada_napari.core.models.registry",
    "evaluate": "empanada_napari.core.metrics",
    "read_image": "empanada_napari.core.io",
    "write_labels": "empanada_napari.core.io",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
