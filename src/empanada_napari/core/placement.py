"""Where an image sits in space: its voxel size (``scale``), ``translate`` and ``units``.

Read from an input file (OME-Zarr NGFF metadata, the plugin's own zarr attributes, ImageJ
TIFF tags) and recorded in a zarr output (its OME-Zarr ``multiscales`` and ``empanada``
record), which the plugin's napari reader and OME-Zarr readers give back: a result reopened
lands on its image at the image's voxel size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

KEYS = ("scale", "translate", "units")
#: ImageJ's unit names and the ones napari (pint) and OME-Zarr use.
_UNITS = {
    "nm": "nanometer", "nanometer": "nanometer", "nanometers": "nanometer",
    "um": "micrometer", "µm": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "micrometer": "micrometer", "\\u00b5m": "micrometer", "mm": "millimeter",
    "angstrom": "angstrom", "a": "angstrom",
}  # fmt: skip


def clean(placement: Mapping[str, Any], ndim: int) -> dict[str, Any]:
    """The entries of ``placement`` that describe ``ndim`` axes with finite positive
    scales (numbers as floats, units as strings); anything else is dropped, not guessed."""
    import math

    out: dict[str, Any] = {}
    for key in KEYS:
        value = placement.get(key)
        if value is None or isinstance(value, str) or len(value) < ndim:
            continue
        value = list(value)[-ndim:]
        if key == "units":
            out[key] = [str(u) for u in value]
            continue
        try:
            numbers = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        ok = all(math.isfinite(v) for v in numbers)
        if key == "scale":
            ok = ok and all(v > 0 for v in numbers)
        if ok:
            out[key] = numbers
    return out


def read_placement(path: str | Path, ndim: int, key: str | None = None) -> dict[str, Any]:
    """The placement recorded in an image file, ``{}`` when it records none (or an
    unreadable one: a missing voxel size never stops a segmentation)."""
    path = Path(path)
    try:
        if path.is_dir():
            return clean(_zarr_placement(path, key), ndim)
        if path.suffix.lower() in (".tif", ".tiff"):
            return clean(_tiff_placement(path, ndim), ndim)
    except Exception:  # noqa: BLE001 - metadata is optional: fall back to pixels
        return {}
    return {}


def _zarr_placement(path: Path, key: str | None) -> Mapping[str, Any]:
    import zarr

    from .ngff import ATTR, read_ngff

    if key is None:
        ngff = read_ngff(path)
        if ngff is not None:
            return ngff[1]
    node = zarr.open(str(path), mode="r")
    node = node[key] if key is not None else node
    return dict(node.attrs.get(ATTR) or {})


def _tiff_placement(path: Path, ndim: int) -> dict[str, Any]:
    """ImageJ TIFFs: X/YResolution (pixels per unit), the z ``spacing`` and ``unit``."""
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        meta = tif.imagej_metadata or {}
        if not meta:
            return {}
        tags = tif.pages[0].tags
        y = _pixel_size(tags.get("YResolution"))
        x = _pixel_size(tags.get("XResolution"))
    if x is None or y is None:
        return {}
    unit = _UNITS.get(str(meta.get("unit", "")).strip().lower(), "pixel")
    scale = [y, x] if ndim == 2 else [float(meta.get("spacing", 1.0)), y, x]
    return {"scale": scale, "units": [unit] * len(scale)}


def _pixel_size(tag: Any) -> float | None:
    if tag is None:
        return None
    num, den = tag.value
    return float(den) / float(num) if num else None


def record_placement(path: str | Path, placement: Mapping[str, Any]) -> None:
    """Record ``placement`` in the plugin's zarr store at ``path`` (its ``empanada`` record
    and, in an OME-Zarr group, its ``multiscales``); nothing when there is nothing valid."""
    from .ngff import open_labels, update_meta

    placement = clean(placement, len(open_labels(path).shape))
    if placement:
        update_meta(path, **placement)
