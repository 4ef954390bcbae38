"""Remove small objects and objects touching the border, into a new array."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from empanada_napari.core import jobs
from empanada_napari.core.errors import InputError

from ._boxes import blocks, positive_int, read
from .index import LabelIndex


def _filter_plane_ids(index: LabelIndex, min_size: int, border_axes: Sequence[int] | None):
    small = index.ids[index.counts < int(min_size)]
    edge = index.touching_border(border_axes) if border_axes is not None else np.zeros(0)
    return np.union1d(small, edge).astype(np.int64)


def filter_labels(
    labels: Any,
    *,
    min_size: int = 0,
    exclude_border: bool = False,
    spatial_ndim: int | None = None,
    index: LabelIndex | None = None,
    progress: jobs.Progress | None = None,
    cancel: jobs.CancelFlag = None,
) -> tuple[Any, np.ndarray]:
    """Labels without objects below ``min_size`` voxels and/or touching the border.

    Returns a new array (numpy for numpy input, a lazy dask array otherwise, so a zarr volume is
    never loaded) and the removed ids. With ``spatial_ndim`` smaller than ``labels.ndim`` each
    plane (or volume) along the leading axes is its own set of objects (2D+t stacks), and the
    border is that of the last ``spatial_ndim`` axes. ``progress(done, total)`` counts the
    slabs (or planes) indexed and then written; ``cancel`` is checked between them.
    """
    ndim = len(labels.shape)
    spatial_ndim = ndim if spatial_ndim is None else int(spatial_ndim)
    if not 1 <= spatial_ndim <= ndim:
        raise InputError(f"spatial_ndim must be in 1..{ndim}")
    min_size = positive_int(min_size, "min size", minimum=0)
    lead = ndim - spatial_ndim
    border_axes = list(range(lead, ndim)) if exclude_border else None
    numpy_out = isinstance(labels, np.ndarray)
    slabs = blocks(labels.shape) if lead == 0 else list(np.ndindex(*labels.shape[:lead]))
    # Work units: indexing (unless an index is given) and, for numpy, writing the copy.
    n_index = len(slabs) if (lead or index is None) else 0
    total = n_index + (len(slabs) if numpy_out else 0)
    if lead == 0:
        if index is None:
            index = LabelIndex.build(
                labels, progress=jobs.part_progress(progress, 0, total), cancel=cancel
            )
        plan = {(): _filter_plane_ids(index, min_size, border_axes)}
    else:
        plan = {}
        for done, lead_idx in enumerate(slabs):
            jobs.check_cancelled(cancel)
            sub = LabelIndex.build(read(labels, lead_idx))
            plan[lead_idx] = _filter_plane_ids(
                sub, min_size, None if border_axes is None else range(spatial_ndim)
            )
            jobs.report(progress, done + 1, total)
    all_removed = np.unique(np.concatenate([np.zeros(0, np.int64), *plan.values()]))
    if numpy_out:
        out = labels.copy()
        for done, box in enumerate(slabs):
            jobs.check_cancelled(cancel)
            view = out[box]
            removed = plan[()] if lead == 0 else plan[box]
            if len(removed):
                view[np.isin(view, removed)] = 0
            jobs.report(progress, n_index + done + 1, total)
        return out, all_removed
    import dask.array as da

    arr = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks="auto")
    if lead == 0:
        removed = plan[()]
        return arr.map_blocks(lambda b: np.where(np.isin(b, removed), 0, b)), all_removed
    planes = []
    for lead_idx, removed in plan.items():
        planes.append(arr[lead_idx].map_blocks(lambda b, r=removed: np.where(np.isin(b, r), 0, b)))
    out = da.stack(planes).reshape(labels.shape)
    return out, all_removed
