"""Per-label morphology: dilate, erode, open, close and fill holes without labels mixing."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from empanada_napari.core import jobs
from empanada_napari.core.errors import InputError

from ._boxes import BLOCK_VOXELS, ball, blocks, check_fixed, full_box, read, squeeze_axes
from ._boxes import positive_int as _positive_int
from .edits import Edit, make_edit, picked
from .index import LabelIndex

MORPH_OPERATIONS = ("dilate", "erode", "open", "close", "fill holes")


def morph_labels(
    labels: Any,
    operation: str,
    radius: int = 1,
    *,
    index: LabelIndex,
    ids: Iterable[int] | None = None,
    fixed: Mapping[int, int] | None = None,
    block_voxels: int = BLOCK_VOXELS // 4,
    progress: jobs.Progress | None = None,
    cancel: jobs.CancelFlag = None,
) -> Edit:
    """Dilate, erode, open, close or fill holes of ``ids`` (all labels when None).

    Per-label operations with a Euclidean ball of ``radius`` voxels (a disk in a plane): no
    label grows into another (dilation and closing only fill background; where two grown
    labels meet the nearest wins), erosion and opening only remove voxels of the picked labels.
    ``fill holes`` fills background cavities enclosed by one label (a pocket open to the image
    border is not a hole). The image border does not erode.

    Large regions (all labels of a volume) are processed in slabs of about ``block_voxels``
    along the first axis, each with a margin of the operation's reach, so the result is the
    same as in one piece; ``progress(done, total)`` counts slabs and ``cancel`` is checked
    between them. Filling holes needs the whole region at once (a cavity may span slabs).
    """
    if operation not in MORPH_OPERATIONS:
        raise InputError(f"unknown operation {operation!r}; use one of {MORPH_OPERATIONS}")
    fixed = check_fixed(index.shape, fixed)
    if operation == "fill holes":
        radius, reach = 0, 1
    else:
        radius = _positive_int(radius, "radius")
        if radius > max(index.shape):
            raise InputError(f"radius {radius} is larger than the labels {tuple(index.shape)}")
        # How far from a voxel the result there looks: opening and closing chain two steps.
        reach = 2 * radius if operation in ("open", "close") else radius
    if ids is None:
        if len(index) == 0:
            raise InputError("the labels are empty: nothing to morph")
        chosen = index.ids
        box = full_box(index.shape, fixed)
    else:
        chosen = picked(index, ids, operation)
        # The box with the margin each step reads (closing grows then erodes: two radii);
        # a fixed plane stays one plane thick.
        pad = reach if operation == "close" else max(radius, 1)
        box = index.union_box(chosen, fixed, pad=pad)
    old = read(labels, box)
    axes = squeeze_axes(fixed)
    region = old.squeeze(axis=axes) if axes else old
    step = _operation(operation, radius, chosen)
    if operation == "fill holes":
        jobs.check_cancelled(cancel)
        out = step(region)
        jobs.report(progress, 1, 1)
    else:
        out = _slabwise(region, step, reach, block_voxels, progress, cancel)
    return make_edit(box, old, out.astype(old.dtype).reshape(old.shape))


def _operation(
    operation: str, radius: int, chosen: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """The operation on one region (a whole box or a slab with its margin)."""
    from skimage.segmentation import expand_labels

    def dilate(region: np.ndarray) -> np.ndarray:
        grown = expand_labels(np.where(np.isin(region, chosen), region, 0), radius)
        return np.where((region == 0) & (grown != 0), grown, region)

    def erode(region: np.ndarray) -> np.ndarray:
        return np.where(np.isin(region, chosen) & ~_erode_keep(region, radius), 0, region)

    def opening(region: np.ndarray) -> np.ndarray:
        core = _erode_keep(region, radius)
        if core.any():
            near = ndi.distance_transform_edt(~core) <= radius
        else:  # (the transform of an array without zeros is not a distance to anything)
            near = np.zeros(region.shape, bool)
        return np.where(np.isin(region, chosen) & ~near, 0, region)

    def closing(region: np.ndarray) -> np.ndarray:
        grown = expand_labels(np.where(np.isin(region, chosen), region, 0), radius)
        grown = np.where(region != 0, region, grown)
        keep = _erode_keep(grown, radius)
        return np.where((region == 0) & keep & np.isin(grown, chosen), grown, region)

    steps = {"dilate": dilate, "erode": erode, "open": opening, "close": closing}
    return steps.get(operation, lambda region: _fill_holes(region, chosen))


def _slabwise(
    region: np.ndarray,
    step: Callable[[np.ndarray], np.ndarray],
    reach: int,
    block_voxels: int,
    progress: jobs.Progress | None,
    cancel: jobs.CancelFlag,
) -> np.ndarray:
    """``step`` applied slab by slab along axis 0, each slab read with ``reach`` of margin."""
    plane = int(np.prod(region.shape[1:])) or 1
    # Slabs at least four margins thick, so the margins do not dominate the work.
    slabs = blocks(region.shape, max(block_voxels, 4 * reach * plane))
    if len(slabs) == 1:
        jobs.check_cancelled(cancel)
        out = step(region)
        jobs.report(progress, 1, 1)
        return out
    out = np.empty_like(region)
    n = region.shape[0]
    for done, box in enumerate(slabs):
        jobs.check_cancelled(cancel)
        start, stop = box[0].start, box[0].stop
        lo, hi = max(0, start - reach), min(n, stop + reach)
        out[start:stop] = step(region[lo:hi])[start - lo : stop - lo]
        jobs.report(progress, done + 1, len(slabs))
    return out


def _erode_keep(region: np.ndarray, radius: int) -> np.ndarray:
    """Voxels whose whole ball of ``radius`` holds one (non-zero) label: the per-label erosion.

    The image border does not erode (values are replicated beyond it).
    """
    footprint = ball(region.ndim, radius)
    high = ndi.maximum_filter(region, footprint=footprint, mode="nearest")
    low = ndi.minimum_filter(region, footprint=footprint, mode="nearest")
    return (high == low) & (region != 0)


def _fill_holes(region: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Background cavities enclosed by exactly one chosen label, filled with that label."""
    comp, n = ndi.label(region == 0)
    if n == 0:
        return region
    border = np.zeros(n + 1, bool)
    for axis in range(region.ndim):
        for end in (0, -1):
            border[np.take(comp, end, axis=axis)] = True
    pairs = []
    for axis in range(region.ndim):
        a = [slice(None)] * region.ndim
        b = [slice(None)] * region.ndim
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        for c_sl, l_sl in ((a, b), (b, a)):
            c, lab = comp[tuple(c_sl)], region[tuple(l_sl)]
            hit = (c > 0) & (lab != 0)
            pairs.append(np.stack([c[hit].astype(np.int64), lab[hit].astype(np.int64)], 1))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    n_neigh = np.bincount(pairs[:, 0], minlength=n + 1)
    fill = np.zeros(n + 1, np.int64)
    single = pairs[n_neigh[pairs[:, 0]] == 1]
    fill[single[:, 0]] = single[:, 1]
    fill[border] = 0
    fill[~np.isin(fill, chosen)] = 0
    return np.where(comp > 0, fill[comp], region).astype(region.dtype)
