"""napari reader and writer for the plugin's zarr outputs (the exporter is core.io's).

The plugin's zarr outputs are zarr arrays with attributes under the key ``empanada`` (the
chunked 3D driver records its parameters and status there; the exporter records the layer's
kind, name, scale and translate). The reader opens them lazily as Labels layers (or Image
layers for exported images), keeping their dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.io import EXPORT_ATTR as ATTR


def _open_array(path: Path):
    """The zarr array at ``path`` if it is one of ours, else None."""
    try:
        import zarr

        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store: not ours to read
        return None
    if not hasattr(node, "shape") or ATTR not in node.attrs:
        return None
    return node


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader: a function for a plugin-written ``.zarr`` array, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.suffix.lower() != ".zarr" or _open_array(path) is None:
        return None
    return read_zarr


def read_zarr(path: str | list[str]) -> list[tuple]:
    """Layer data for a plugin-written zarr array (lazy, dtype kept)."""
    paths = [path] if isinstance(path, str | Path) else path
    layers = []
    for p in paths:
        array = _open_array(Path(p))
        if array is None:
            continue
        meta = dict(array.attrs[ATTR])
        kind = "image" if meta.get("kind") == "image" else "labels"
        kwargs: dict[str, Any] = {"name": meta.get("name") or Path(p).stem}
        for key in ("scale", "translate"):
            if meta.get(key) is not None and len(meta[key]) == array.ndim:
                kwargs[key] = tuple(meta[key])
        layers.append((array, kwargs, kind))
    return layers


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "layer"


def write_labels_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: save one Labels layer as a zarr array the reader opens again."""
    target = Path(path)
    if target.suffix.lower() != ".zarr":
        target = target.with_suffix(".zarr")
    name = meta.get("name") or target.stem
    from ..core.io import export_array

    export_array(data, target, "zarr", kind="labels", name=name, meta=meta, overwrite=True)
    return [str(target)]
