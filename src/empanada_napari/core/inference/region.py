"""A region of a volume to segment: a box of (z, y, x) slices checked against the volume,
and the volume cropped to it without reading it (a numpy view, or a lazy dask array for a
zarr or dask volume, so a 1 GB region of a 100 GB volume costs nothing until its blocks run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

Box = tuple[slice, ...]
AXIS_NAMES = "zyx"


def check_box(shape: Sequence[int], box: Sequence[slice]) -> Box:
    """``box`` with its ends clipped to ``shape``; an InputError when it holds no voxel or
    has the wrong number of axes."""
    if len(box) != len(shape):
        raise InputError(f"a region needs {len(shape)} ranges (z, y, x), got {len(box)}")
    out = []
    for name, size, s in zip(AXIS_NAMES[-len(shape) :], shape, box, strict=True):
        start = 0 if s.start is None else int(s.start)
        stop = int(size) if s.stop is None else int(s.stop)
        start, stop = max(0, start), min(int(size), stop)
        if stop <= start:
            raise InputError(
                f"the region holds no voxel along {name} ({start} to {stop} of 0 to {size}): "
                "it lies outside the image"
            )
        out.append(slice(start, stop))
    return tuple(out)


def is_whole(shape: Sequence[int], box: Box) -> bool:
    """Whether ``box`` is the whole volume."""
    return all(s.start == 0 and s.stop == int(n) for s, n in zip(box, shape, strict=True))


def crop(volume: Any, box: Box) -> Any:
    """``volume[box]`` without reading it: a view of a numpy (or memory-mapped) array, a
    lazily sliced dask array for anything else (zarr, dask, other array-likes)."""
    if isinstance(volume, np.ndarray) or hasattr(volume, "dask"):
        return volume[box]
    import dask.array as da

    chunks = getattr(volume, "chunks", None)
    lazy = da.from_array(volume, chunks=chunks if chunks is not None else "auto")
    return lazy[box]


def box_from_points(points: np.ndarray, shape: Sequence[int], axes: Sequence[int]) -> Box:
    """The whole-volume box narrowed along ``axes`` to the integer extent of ``points``
    (data coordinates, one row per corner: a rectangle's corners, the view's corners)."""
    points = np.asarray(points, float).reshape(-1, len(shape))
    if not np.isfinite(points).all():
        raise InputError("the region's corners are not finite numbers")
    box = [slice(0, int(n)) for n in shape]
    for axis in axes:
        lo = int(np.floor(points[:, axis].min()))
        hi = int(np.ceil(points[:, axis].max()))
        box[axis] = slice(lo, hi if hi > lo else lo + 1)
    return check_box(shape, box)


def box_text(box: Box) -> str:
    """``z 100-355, y 0-767, x 0-1023`` (inclusive ends, as napari's slider shows them)."""
    names = AXIS_NAMES[-len(box) :]
    return ", ".join(f"{n} {s.start}-{s.stop - 1}" for n, s in zip(names, box, strict=True))


def box_suffix(box: Box) -> str:
    """A file-name suffix naming the region: ``z100-355_y0-767_x0-1023``."""
    return box_text(box).replace(", ", "_").replace(" ", "")
