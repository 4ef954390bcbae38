"""The plugin's zarr stores on disk: OME-Zarr (NGFF 0.4) groups, read and written in one place.

Every zarr the plugin writes (segmentation outputs of the CLI and the docks, exports) is a
group holding one full-resolution array ``"0"``, with

* ``multiscales``: the voxel size, translation and units, so napari-ome-zarr, Fiji and other
  OME-Zarr readers place it on its image;
* ``image-label`` (labels only): marks it as a label image for OME-Zarr readers;
* ``empanada``: the plugin's own record (kind, name, and for a segmentation its status, job
  fingerprint and progress), read by the plugin's napari reader, ``resume`` and
  ``--overwrite`` (which replaces only stores that carry it).

Segmentation outputs of earlier versions are plain zarr arrays with the ``empanada``
attribute on the array; :func:`labels_path`, :func:`read_meta` and :func:`update_meta` read
and resume both forms, so nothing written before has to be converted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Attribute under which the plugin records what a store holds.
ATTR = "empanada"
#: The full-resolution array of a group (the only level the plugin writes).
LEVEL = "0"
#: NGFF axis names for 2 to 5 dimensions (OME-Zarr 0.4: time, channel, then space).
_AXES = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}
#: napari/pint unit names that OME-Zarr also knows (others are left out of the axes).
_NGFF_UNITS = {
    "angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter", "picometer",
    "second", "millisecond", "microsecond", "nanosecond", "minute", "hour",
}  # fmt: skip
#: Placement entries kept in the ``empanada`` record and mirrored into ``multiscales``.
_PLACEMENT = ("scale", "translate", "units")


def plugin_record(kind: str, name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``empanada`` record of an export: kind, name and the layer's placement."""
    out: dict[str, Any] = {"kind": kind, "name": name}
    for key in _PLACEMENT:
        if meta.get(key) is not None:
            out[key] = (
                [str(v) for v in meta[key]] if key == "units" else [float(v) for v in meta[key]]
            )
    return out


def ngff_multiscales(name: str, meta: dict[str, Any], ndim: int) -> list[dict[str, Any]]:
    """OME-Zarr (NGFF 0.4) ``multiscales`` metadata of a single-level image named ``name``,
    with the layer's scale, translation and units, so any OME-Zarr reader places it right."""
    names = _AXES.get(ndim, "".join(f"d{i}" for i in range(ndim)))
    units = list(meta.get("units") or [])
    axes = []
    for i, axis in enumerate(names):
        kind = {"t": "time", "c": "channel"}.get(axis, "space")
        entry = {"name": axis, "type": kind}
        unit = str(units[i]) if i < len(units) else ""
        if unit in _NGFF_UNITS:
            entry["unit"] = unit
        axes.append(entry)
    scale = [float(v) for v in (meta.get("scale") or [1.0] * ndim)]
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if meta.get("translate") is not None and any(float(v) for v in meta["translate"]):
        transforms.append(
            {"type": "translation", "translation": [float(v) for v in meta["translate"]]}
        )
    return [
        {
            "version": "0.4",
            "name": name,
            "axes": axes,
            "datasets": [{"path": LEVEL, "coordinateTransformations": transforms}],
        }
    ]


def ngff_group(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype):
    """A new zarr group with an empty array "0", in the format OME-Zarr 0.4 readers expect
    (zarr v2 on disk, whichever zarr-python writes it)."""
    import zarr

    if int(zarr.__version__.split(".")[0]) >= 3:
        group = zarr.open_group(str(path), mode="w", zarr_format=2)
        array = group.create_array(
            name=LEVEL, shape=shape, chunks=chunks, dtype=dtype, fill_value=0
        )
    else:  # zarr 2
        group = zarr.open_group(str(path), mode="w")
        array = group.zeros(LEVEL, shape=shape, chunks=chunks, dtype=dtype)
    return group, array


def create_labels(
    path: str | Path,
    shape: tuple[int, ...],
    dtype=np.uint32,
    chunks: tuple[int, ...] | None = None,
    *,
    name: str | None = None,
    record: dict[str, Any] | None = None,
):
    """A new, zero-filled OME-Zarr labels store at ``path`` (replacing what is there), named
    ``name`` (default: the folder's stem), its ``empanada`` record set to ``record``; returns
    the array to write into, chunk by chunk."""
    path = Path(path).expanduser()
    name = name or path.stem
    if chunks is None:
        # One slice (up to 1024 x 1024) per chunk: the 2D engine writes slice batches.
        base = (1,) * (len(shape) - 2) + (1024, 1024)
        chunks = tuple(min(s, c) for s, c in zip(shape, base, strict=True))
    group, array = ngff_group(path, tuple(shape), tuple(chunks), dtype)
    group.attrs.update(
        {
            "multiscales": ngff_multiscales(name, {}, len(shape)),
            "image-label": {"version": "0.4"},
            ATTR: {"kind": "labels", "name": name, **(record or {})},
        }
    )
    return array


def is_group(path: str | Path) -> bool:
    """Whether ``path`` holds a zarr group (v2 or v3 on disk), not a plain array."""
    path = Path(path)
    if (path / ".zgroup").exists():
        return True
    node = path / "zarr.json"
    if not node.exists():
        return False
    import json

    try:
        return json.loads(node.read_text()).get("node_type") == "group"
    except (OSError, ValueError):
        return False


def labels_path(path: str | Path) -> Path:
    """Where the labels array of a plugin store lies: ``path/0`` in a group, ``path`` itself
    for a plain array (segmentation outputs of earlier versions)."""
    path = Path(path).expanduser()
    return path / LEVEL if is_group(path) else path


def open_labels(path: str | Path, mode: str = "r"):
    """The labels array of a plugin store (either form), opened with ``mode``."""
    import zarr

    return zarr.open_array(str(labels_path(path)), mode=mode)


def _root(path: Path, mode: str):
    import zarr

    if is_group(path):
        return zarr.open_group(str(path), mode=mode)
    return zarr.open_array(str(path), mode=mode)


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``empanada`` record of a plugin store (group or plain array); errors propagate
    (a missing or unreadable store is the caller's to judge)."""
    return dict(_root(Path(path).expanduser(), "r").attrs.get(ATTR) or {})


def update_meta(path: str | Path, **meta: Any) -> dict[str, Any]:
    """Merge ``meta`` into a store's ``empanada`` record; in a group, a new scale,
    translation or units also rewrite ``multiscales``. Returns the merged record."""
    path = Path(path).expanduser()
    node = _root(path, "r+")
    merged = dict(node.attrs.get(ATTR) or {})
    merged.update(meta)
    new: dict[str, Any] = {ATTR: merged}
    if is_group(path) and any(k in meta for k in _PLACEMENT):
        ndim = len(open_labels(path).shape)
        new["multiscales"] = ngff_multiscales(merged.get("name") or path.stem, merged, ndim)
    node.attrs.update(new)
    return merged


def read_ngff(path: str | Path) -> tuple[Any, dict[str, Any]] | None:
    """``(level-0 array, {"scale", "translate", "units", ...})`` of an OME-Zarr image, with
    the plugin's own record (kind, name, ...) merged in; None when ``path`` is not one."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr store
        return None
    if hasattr(node, "shape"):
        return None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    first = multiscales[0]
    dataset = first["datasets"][0]
    array = node[dataset["path"]]
    meta: dict[str, Any] = dict(attrs.get(ATTR) or {})
    for transform in first.get("coordinateTransformations", []) + dataset.get(
        "coordinateTransformations", []
    ):
        if transform.get("type") == "scale":
            meta["scale"] = [float(v) for v in transform["scale"]]
        elif transform.get("type") == "translation":
            meta["translate"] = [float(v) for v in transform["translation"]]
    units = [a.get("unit") for a in first.get("axes", []) if isinstance(a, dict)]
    if any(units):
        meta["units"] = [u or "pixel" for u in units]
    return array, meta
