"""napari reader and writer for the plugin's zarr outputs (the exporter is core.io's).

Exports (the Export widget, napari's "Save as zarr") are OME-Zarr groups: NGFF metadata
with the layer's scale, translation and units, plus the plugin's ``empanada`` attribute (kind,
name). 3D segmentation outputs are zarr arrays with the ``empanada`` attribute (parameters and
status). The reader opens both, and older exports, lazily as Labels layers (or Image layers
for exported images), keeping their dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.io import EXPORT_ATTR as ATTR


def _open(path: Path) -> tuple[Any, dict[str, Any]] | None:
    """``(array, metadata)`` of a zarr store the plugin wrote, else None.

    Two forms: OME-Zarr groups (exports; scale and translation from their NGFF metadata) and
    plain arrays with the plugin's attribute (3D outputs, and exports of older versions).
    """
    from ..core.io import read_ngff

    ngff = read_ngff(path)
    if ngff is not None:
        array, meta = ngff
        return (array, meta) if ATTR in _group_attrs(path) else None
    try:
        import zarr

        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store: not ours to read
        return None
    if not hasattr(node, "shape") or ATTR not in node.attrs:
        return None
    return node, dict(node.attrs[ATTR])


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
        found = _open(Path(p))
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
