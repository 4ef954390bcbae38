"""The model's doubt about an image: where correcting a patch teaches the model most.

Used by :func:`~.patches.pick_patches` ("most uncertain"): the model segments a plane (and
its flipped views), :func:`doubt_maps` marks every kind of doubt per pixel, and
:func:`tile_score` turns a tile's share of each into one score, weighted by how much of the
tile the model calls mitochondria.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..settings import StackSettings

#: A pixel is doubtful when its foreground probability is this close to the threshold.
SEMANTIC_MARGIN = 0.25
#: An object whose centre heat-map peak is below this is "weakly centred".
WEAK_CENTRE = 0.5
#: Objects of neighbouring planes link at this IoU (the 3D stack mode's own threshold).
LINK_IOU = StackSettings().slice_link_iou
#: A tile the model finds (almost) empty teaches little however doubtful it is: a tile's doubt
#: is weighted by its predicted foreground, EMPTY_WEIGHT at none, 1 from FOREGROUND_FULL up
#: (docs/benchmarks.md, adaptation loop: without it the picks held half the objects of random
#: patches and finetuned worse).
FOREGROUND_FULL = 0.1
EMPTY_WEIGHT = 0.25


def _foreground(prob, h: int, w: int) -> np.ndarray:
    """Foreground probability (H, W) from semantic probabilities (C, Hg, Wg): with several
    classes, doubt about "is this an object at all" is 1 - P(background)."""
    prob = prob.float()
    fg = prob[0] if prob.shape[0] == 1 else 1.0 - prob[0]
    return fg[:h, :w].cpu().numpy()


def predict_plane(
    engine, plane: np.ndarray, value_range, *, views: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels (H, W), foreground probability (H, W) and centre heat-map (H, W) of a plane,
    and with ``views`` where the model's four flipped views disagree (H, W bool: some call
    the pixel foreground, some do not), else None."""
    batch = engine.normalize(plane[None], value_range)
    raw = engine.infer(batch, keep_views=views)
    labels = engine.postprocess(raw, 0)
    h, w = raw.shape
    fg = _foreground(raw.sem_prob[0], h, w)
    ctr = raw.ctr_hmp[0, 0].float().cpu().numpy()
    stride = max(1, -(-fg.shape[0] // ctr.shape[0]))
    ctr = np.repeat(np.repeat(ctr, stride, axis=0), stride, axis=1)[:h, :w]
    flips = None
    if views:
        thr = engine.settings.confidence_thr
        votes = sum(_foreground(v[0], h, w) > thr for v in raw.extra["sem_views"])
        flips = (votes > 0) & (votes < len(raw.extra["sem_views"]))
    return labels, fg, ctr, flips


def _touching(labels: np.ndarray) -> np.ndarray:
    """Ids of objects sharing a border with another object (a split the model had to make)."""
    ids = []
    for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1])):
        edge = (a != b) & (a > 0) & (b > 0)
        ids += [a[edge], b[edge]]
    return np.unique(np.concatenate(ids)) if ids else np.zeros(0, labels.dtype)


def _unlinked(labels: np.ndarray, neighbours: Sequence[np.ndarray]) -> np.ndarray:
    """Ids of objects with no partner of IoU >= LINK_IOU in any of the neighbouring planes."""
    from ..metrics import label_overlap

    ids = np.unique(labels[labels > 0])
    if not neighbours or ids.size == 0:
        return np.zeros(0, labels.dtype)
    linked = np.zeros(0, labels.dtype)
    for other in neighbours:
        ov = label_overlap(labels, other)
        ok = ov.pair_ious() >= LINK_IOU
        linked = np.union1d(linked, ov.pred_ids[ov.pair_pred[ok]])
    return np.setdiff1d(ids, linked)


def doubt_maps(
    labels: np.ndarray,
    prob: np.ndarray,
    ctr: np.ndarray,
    *,
    confidence_thr: float = 0.5,
    neighbours: Sequence[np.ndarray] = (),
    flips: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-pixel 0/1 maps of the model's doubt on one plane (the "uncertain" strategy).

    * ``semantic``: the foreground probability lies within :data:`SEMANTIC_MARGIN` of the
      threshold (the model hesitates between object and background);
    * ``centres``: pixels of objects whose centre heat-map peak is below
      :data:`WEAK_CENTRE`, or that touch another object (weak or competing centres);
    * ``linking``: pixels of objects that match nothing (IoU >= 0.25) in the neighbouring
      planes' predictions (``neighbours``; empty for a 2D image);
    * ``flips`` (when ``flips`` is given): pixels where the model's flipped views disagree,
      so its answer depends on the orientation alone (see :func:`predict_plane`).
    """
    from scipy import ndimage as ndi

    maps = {"semantic": (np.abs(prob - confidence_thr) < SEMANTIC_MARGIN).astype(np.float32)}
    ids = np.unique(labels[labels > 0])
    doubtful = np.zeros(0, labels.dtype)
    if ids.size:
        peaks = np.asarray(ndi.maximum(ctr, labels, index=ids))
        doubtful = np.union1d(ids[peaks < WEAK_CENTRE], _touching(labels))
    maps["centres"] = np.isin(labels, doubtful).astype(np.float32)
    maps["linking"] = np.isin(labels, _unlinked(labels, neighbours)).astype(np.float32)
    if flips is not None:
        maps["flips"] = np.asarray(flips, dtype=np.float32)
    return maps


def tile_score(parts: Mapping[str, float], labels: np.ndarray) -> float:
    """Rank of a candidate tile for the "uncertain" strategy: the sum of its mean doubt maps
    (``parts``), weighted by the fraction of the tile the model labels (``labels``):
    :data:`EMPTY_WEIGHT` for none, 1 from :data:`FOREGROUND_FULL` up."""
    fg = float((np.asarray(labels) > 0).mean()) if np.size(labels) else 0.0
    weight = EMPTY_WEIGHT + (1.0 - EMPTY_WEIGHT) * min(1.0, fg / FOREGROUND_FULL)
    return float(sum(parts.values())) * weight
