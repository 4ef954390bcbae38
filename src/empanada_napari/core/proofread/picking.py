"""From clicks to labels: the ids under points, the voxels along a line, where a label is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from empanada_napari.core.errors import InputError

from ._boxes import Box, as_ids, check_fixed, full_box, read
from .index import LabelIndex


def labels_at(labels: Any, coords: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Label values at data coordinates (rounded); ``InputError`` for points outside."""
    coords = np.atleast_2d(np.asarray(coords, float))
    if coords.size == 0:
        return np.zeros(0, np.int64)
    if coords.ndim != 2 or coords.shape[1] != len(labels.shape):
        raise InputError(
            f"points have {coords.shape[-1]} coordinates, the labels {len(labels.shape)} axes"
        )
    if not np.all(np.isfinite(coords)):
        raise InputError("points must have finite coordinates")
    pts = np.round(coords).astype(np.int64)
    outside = np.any((pts < 0) | (pts >= np.array(labels.shape)), axis=1)
    if outside.any():
        bad = coords[outside][0]
        raise InputError(
            f"{int(outside.sum())} point(s) outside the labels (e.g. at "
            f"{np.round(bad, 1).tolist()}, shape {tuple(labels.shape)})"
        )
    values = []
    for p in pts:
        v = labels[tuple(slice(int(c), int(c) + 1) for c in p)]
        values.append(int(np.asarray(v).ravel()[0]))
    return np.array(values, np.int64)


def path_coordinates(vertices: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Integer coordinates every voxel along a polyline (the vertices of a line or path)."""
    vertices = np.atleast_2d(np.asarray(vertices, float))
    if len(vertices) == 1:
        return np.round(vertices).astype(np.int64)
    out = []
    for a, b in zip(vertices[:-1], vertices[1:], strict=True):
        n = int(np.ceil(np.abs(b - a).max())) + 1
        out.append(np.round(np.linspace(a, b, n)).astype(np.int64))
    return np.unique(np.concatenate(out), axis=0)


def label_location(
    labels: Any,
    label_id: int,
    *,
    index: LabelIndex | None = None,
    fixed: Mapping[int, int] | None = None,
    box: Box | None = None,
) -> tuple[int, ...]:
    """A voxel of ``label_id`` nearest its centroid (data coordinates), to jump to it.

    The label is looked for in its box from ``index``, or in ``box`` (e.g. a measured
    bounding box) when there is no index.
    """
    if index is not None:
        box = index.union_box([label_id], fixed)
    elif box is None:
        raise InputError("label_location needs an index or a box to look in")
    else:
        box = list(full_box(labels.shape))[: len(labels.shape) - len(box)] + list(box)
        for axis, at in check_fixed(labels.shape, fixed).items():
            box[axis] = slice(at, at + 1)
        box = tuple(box)
    mask = read(labels, box) == int(as_ids([label_id])[0])
    coords = np.argwhere(mask)
    if len(coords) == 0:
        raise InputError(f"label {label_id} has no voxel here")
    centre = coords.mean(0)
    best = coords[np.argmin(((coords - centre) ** 2).sum(1))]
    return tuple(int(c + s.start) for c, s in zip(best, box, strict=True))
