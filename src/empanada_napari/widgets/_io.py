"""napari reader and writer for the plugin's zarr outputs (the exporter is core.io's).

Everything the plugin writes to zarr (segmentation outputs of the docks and the CLI, exports,
napari's "Save as zarr") is an OME-Zarr group (core/ngff.py): NGFF metadata with the scale,
translation and units, plus the plugin's ``empanada`` record (kind, name; for a segmentation
its status and job). Segmentation outputs of earlier versions are plain zarr arrays with the
record. The reader opens every form lazily as a Labels layer (an Image layer for exported
images), keeping the dtype and the voxel size. A finished labels result opens writable when
its folder is, so the proofreading docks edit it in place (with undo), as they edit the 3D
dock's result; a run still writing (or killed while writing) opens read-only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.ngff import ATTR


def _open(path: Path, *, edit: bool = False) -> tuple[Any, dict[str, Any]] | None:
    """``(array, metadata)`` of a zarr store the plugin wrote, else None; with ``edit``, a
    finished labels store in a writable folder comes back writable.

    Two forms: OME-Zarr groups (scale and translation from their NGFF metadata) and plain
    arrays with the plugin's attribute (segmentation outputs of earlier versions).
    """
    from ..core.ngff import open_labels, read_ngff

    ngff = read_ngff(path)
    if ngff is not None:
        array, meta = ngff
        if ATTR not in _group_attrs(path):
            return None
    else:
        try:
            import zarr

            array = zarr.open(str(path), mode="r")
        except Exception:  # noqa: BLE001 - not a zarr store: not ours to read
            return None
        if not hasattr(array, "shape") or ATTR not in array.attrs:
            return None
        meta = dict(array.attrs[ATTR])
    if edit and _editable(path, meta):
        array = open_labels(path, mode="r+")
    return array, meta


def _editable(path: Path, meta: dict[str, Any]) -> bool:
    """Labels, not from a run that is still writing (or was killed), in a writable folder."""
    import os

    if meta.get("kind") == "image" or meta.get("status") == "running":
        return False
    return os.access(path, os.W_OK | os.X_OK)


def _group_attrs(path: Path) -> dict[str, Any]:
    import zarr

    return dict(zarr.open(str(path), mode="r").attrs)


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader: a function for a plugin-written ``.zarr`` array, None for anything else."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.suffix.lower() != ".zarr" or _open(path) is None:
        return None
    return read_zarr


def read_zarr(path: str | list[str]) -> list[tuple]:
    """Layer data for a plugin-written zarr array (lazy, dtype kept)."""
    paths = [path] if isinstance(path, str | Path) else path
    layers = []
    for p in paths:
        found = _open(Path(p), edit=True)
        if found is None:
            continue
        array, meta = found
        kind = "image" if meta.get("kind") == "image" else "labels"
        kwargs: dict[str, Any] = {"name": meta.get("name") or Path(p).stem}
        for key in ("scale", "translate"):
            if meta.get(key) is not None and len(meta[key]) == array.ndim:
                kwargs[key] = tuple(meta[key])
        if (meta.get("fingerprint") or {}).get("mode") == "2d":
            # ids restart in every slice: the proofreading docks edit one plane at a time
            kwargs["metadata"] = {"empanada": {"mode": "2d"}}
        units = meta.get("units")
        if units and len(units) == array.ndim and any(u != "pixel" for u in units):
            kwargs["units"] = tuple(units)
        layers.append((array, kwargs, kind))
    return layers


def safe_name(name: str, fallback: str = "layer") -> str:
    """A layer name as a file or folder name: letters, digits, '-', '_' and '.' kept, the
    rest '_', no leading or trailing dots (``fallback`` when nothing is left)."""
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).strip(".")
    return keep or fallback


def write_labels_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: save one Labels layer as a zarr array the reader opens again."""
    target = Path(path)
    if target.suffix.lower() != ".zarr":
        target = target.with_suffix(".zarr")
    name = meta.get("name") or target.stem
    from ..core.io import export_array

    export_array(data, target, "zarr", kind="labels", name=name, meta=meta, overwrite=True)
    return [str(target)]
