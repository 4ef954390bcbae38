"""Diagnostics of 3D instance results beyond F1 and PQ: merges, splits, border-cut objects.

Used by ``benchmarks/accuracy.py`` (issue 17) to say *why* a 3D score is what it is:

* :func:`merges_and_splits`: predicted objects that swallow several true ones, and the reverse;
* :func:`separated_in_2d`: for a merge, in how many slices a 2D result kept the two true
  objects apart (a merge there is the 3D stage's fault, not the network's);
* :func:`border_cut`, :func:`size_filtered` and :func:`without`: score apart the true objects
  the volume cuts (as connectomics benchmarks do) or that the size filters are meant to
  remove (a true object of 500 voxels is not a miss of a run with ``min_size`` 5000).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .errors import InputError
from .metrics import label_overlap
from .objects import keep_objects, sizes_and_boxes, touches_border

__all__ = [
    "MergesSplits",
    "border_cut",
    "merges_and_splits",
    "separated_in_2d",
    "size_filtered",
    "without",
]


@dataclass(frozen=True)
class MergesSplits:
    """Predicted objects that swallow several true ones (merges) and the reverse (splits).

    ``merges[p]`` lists the true ids of which predicted object ``p`` holds at least ``frac`` of
    the voxels (only ``p`` with two or more); ``splits[g]`` lists the predicted ids that lie at
    least ``frac`` inside true object ``g`` (only ``g`` with two or more).
    """

    merges: dict[int, list[int]]
    splits: dict[int, list[int]]

    @property
    def n_merges(self) -> int:
        return len(self.merges)

    @property
    def n_splits(self) -> int:
        return len(self.splits)


def merges_and_splits(pred: ArrayLike, gt: ArrayLike, frac: float = 0.5) -> MergesSplits:
    """Merges and splits of a prediction (see :class:`MergesSplits`), ``frac`` in (0, 1]."""
    if not 0.0 < frac <= 1.0:
        raise InputError(f"frac must be in (0, 1], got {frac}")
    ov = label_overlap(pred, gt)
    pred_of, gt_of = ov.pred_ids[ov.pair_pred], ov.gt_ids[ov.pair_gt]

    def several(key: np.ndarray, value: np.ndarray) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for k, v in zip(key.tolist(), value.tolist(), strict=True):
            out.setdefault(int(k), []).append(int(v))
        return {k: sorted(v) for k, v in out.items() if len(v) >= 2}

    merged = ov.pair_inter >= frac * ov.gt_areas[ov.pair_gt]
    split = ov.pair_inter >= frac * ov.pred_areas[ov.pair_pred]
    return MergesSplits(
        merges=several(pred_of[merged], gt_of[merged]), splits=several(gt_of[split], pred_of[split])
    )


def separated_in_2d(gt: np.ndarray, a: int, b: int, labels_2d: np.ndarray) -> tuple[int, int]:
    """(slices where true objects ``a`` and ``b`` both appear, slices of those where the
    per-slice result ``labels_2d`` gives them different objects: the most frequent non-zero
    label under each differs, or one of them is not found at all)."""
    gt, labels_2d = np.asarray(gt), np.asarray(labels_2d)
    if gt.shape != labels_2d.shape:
        raise InputError(f"shapes differ: {gt.shape} and {labels_2d.shape}")
    both = np.flatnonzero((gt == a).any(axis=(1, 2)) & (gt == b).any(axis=(1, 2)))
    apart = 0
    for z in both.tolist():
        la, lb = labels_2d[z][gt[z] == a], labels_2d[z][gt[z] == b]
        la, lb = la[la > 0], lb[lb > 0]
        if la.size == 0 or lb.size == 0:
            apart += 1
        elif np.bincount(la).argmax() != np.bincount(lb).argmax():
            apart += 1
    return int(both.size), apart


def border_cut(labels: ArrayLike) -> np.ndarray:
    """Ids (sorted) of the objects of ``labels`` whose bounding box touches the border."""
    labels = np.asarray(labels)
    size, lo, hi = sizes_and_boxes(labels, int(labels.max()) if labels.size else 0)
    return np.flatnonzero((size > 0) & touches_border(lo, hi, labels.shape).any(axis=1)) + 1


def size_filtered(labels: ArrayLike, min_size: int, min_extent: int) -> np.ndarray:
    """Ids (sorted) of the objects of ``labels`` that stack mode's border-aware size filters
    would remove (:func:`~.objects.keep_objects`)."""
    labels = np.asarray(labels)
    size, lo, hi = sizes_and_boxes(labels, int(labels.max()) if labels.size else 0)
    keep = keep_objects(size, lo, hi, min_size, min_extent, labels.shape)
    return np.flatnonzero((size > 0) & ~keep) + 1


def without(pred: ArrayLike, gt: ArrayLike, drop: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(pred, gt)`` for scoring without the true objects ``drop``: they are erased from
    ``gt``, and so is every predicted object that lies mostly (>= half its voxels) on them,
    as it is their detection, not a false one."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    dropped = np.isin(gt, np.asarray(drop, dtype=np.int64)) & (gt > 0)
    top = int(pred.max()) if pred.size else 0
    size = np.bincount(pred.reshape(-1), minlength=top + 1)
    on = np.bincount(pred[dropped], minlength=top + 1)
    erase = on >= 0.5 * np.maximum(size, 1)
    erase[0] = True
    return np.where(erase[pred], 0, pred), np.where(dropped, 0, gt)
