"""Instance and semantic segmentation metrics for 2D and 3D label images.

Label images are integer arrays (any signed or unsigned dtype) in which 0 is background and every
other value is one object. Ids need not be consecutive and may be arbitrarily large; nothing here
allocates an array indexed by id.

Definitions (those used to benchmark MitoNet):

* Predicted and true objects are paired by IoU. Candidate pairs are those with IoU >= ``match_iou``
  (default 0.5); among them an assignment maximising the total IoU is chosen (Hungarian algorithm),
  so each object is matched at most once.
* At a threshold ``t >= match_iou`` a matched pair with IoU >= t is a true positive (TP). A matched
  pair below t counts as one false positive and one false negative, like unmatched objects:
  ``FP = n_pred - TP`` and ``FN = n_gt - TP``.
* ``F1@t = TP / (TP + FP/2 + FN/2)``, ``AP@t = TP / (TP + FP + FN)`` (the "average precision" of
  the MitoNet papers), precision = TP / (TP + FP), recall = TP / (TP + FN).
* ``PQ = SQ * RQ`` with SQ the mean IoU of the true positives at 0.5 and RQ = F1@0.5. PQ always
  uses the standard 0.5 matching, whatever ``match_iou`` is.
* Semantic IoU compares the foregrounds (label > 0) of both images.

Conventions for empty inputs: when neither image has an object every score is 1 (perfect
agreement), and semantic IoU is 1 when both foregrounds are empty. When only one side has objects,
F1, AP, PQ, SQ, RQ, precision, recall and semantic IoU are all 0. In particular precision without
predictions is 1 only if there is nothing to find, and recall without true objects is 1 only if
nothing was predicted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import InputError

__all__ = [
    "Matching",
    "as_instances",
    "average_precision",
    "evaluate",
    "f1_score",
    "instance_scores",
    "match_instances",
    "panoptic_quality",
    "semantic_iou",
]

# Voxels handled at once when scanning for runs: bounds the temporary arrays (a few bytes per
# voxel) independently of the volume size and keeps them cache friendly.
_CHUNK_VOXELS = 1 << 22

# Ratio metrics reported per threshold, in output order.
_PER_THRESHOLD = ("precision", "recall", "f1", "ap")


# --------------------------------------------------------------------------- input handling


def _as_labels(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x)  # also materialises dask / zarr arrays
    if arr.dtype == np.bool_:
        raise InputError(
            f"{name} is a boolean mask; label it first with as_instances() or cast it to an "
            "integer dtype"
        )
    if arr.dtype.kind not in "iu":
        raise InputError(
            f"{name} has dtype {arr.dtype}, but label images must be integers; cast it "
            "(e.g. .astype(np.uint32)) or label it first with as_instances()"
        )
    if arr.ndim == 0:
        raise InputError(f"{name} must be an image, not a scalar")
    return arr


def _as_pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = _as_labels(pred, "pred")
    g = _as_labels(gt, "gt")
    if p.shape != g.shape:
        raise InputError(
            f"pred and gt must have the same shape, got pred {p.shape} and gt {g.shape}"
        )
    return p, g


def _check_match_iou(match_iou: float) -> float:
    match_iou = float(match_iou)
    if not 0.0 < match_iou <= 1.0:
        raise InputError(f"match_iou must be in (0, 1], got {match_iou}")
    return match_iou


def _check_thresholds(thresholds: Iterable[float], match_iou: float) -> tuple[float, ...]:
    out: list[float] = []
    for t in thresholds:
        t = float(t)
        if not match_iou <= t <= 1.0:
            # Below match_iou a pair may be unmatched although its IoU exceeds t, so F1@t
            # would be meaningless; the caller must lower match_iou instead.
            raise InputError(
                f"IoU threshold {t} must be in [match_iou, 1] = [{match_iou}, 1]; "
                "pass a smaller match_iou to score lower thresholds"
            )
        if t not in out:
            out.append(t)
    return tuple(out)


def _tkey(t: float) -> str:
    return f"{t:g}"


# --------------------------------------------------------------------------- overlaps


@dataclass(frozen=True)
class _Overlap:
    """Sparse overlap table of two label images (only pairs that share voxels)."""

    pred_ids: np.ndarray  # sorted nonzero ids
    pred_areas: np.ndarray  # int64, voxels per id
    gt_ids: np.ndarray
    gt_areas: np.ndarray
    pair_pred: np.ndarray  # index into pred_ids
    pair_gt: np.ndarray  # index into gt_ids
    pair_inter: np.ndarray  # int64, shared voxels
    fg_inter: int  # voxels that are foreground in both
    fg_union: int  # voxels that are foreground in either

    def pair_ious(self) -> np.ndarray:
        union = self.pred_areas[self.pair_pred] + self.gt_areas[self.pair_gt] - self.pair_inter
        # Integer numerator and denominator: the division is correctly rounded, so exact
        # ratios such as 1/2 or 3/4 compare equal to the thresholds 0.5 and 0.75.
        return self.pair_inter / union


def _group_pairs(
    p: np.ndarray, g: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum weights ``w`` over identical ``(p, g)`` pairs (any integer dtypes)."""
    if p.size == 0:
        return p, g, w
    new = np.empty(p.size, dtype=bool)
    new[0] = True
    if _fits_u32(p) and _fits_u32(g):
        # the usual case: a stable sort of one 64-bit key beats a two-key lexsort (up to 3x)
        key = (p.astype(np.uint64) << np.uint64(32)) | g.astype(np.uint64)
        order = np.argsort(key, kind="stable")
        key = key[order]
        np.not_equal(key[1:], key[:-1], out=new[1:])
    else:
        # lexsort takes the id arrays as they are, so ids of any size and dtype are fine
        order = np.lexsort((g, p))
        ps, gs = p[order], g[order]
        np.not_equal(ps[1:], ps[:-1], out=new[1:])
        new[1:] |= gs[1:] != gs[:-1]
    first = np.flatnonzero(new)
    return p[order[first]], g[order[first]], np.add.reduceat(w[order], first)


def _fits_u32(a: np.ndarray) -> bool:
    if a.dtype.kind == "u" and a.dtype.itemsize <= 4:
        return True
    return bool(a.min() >= 0 and a.max() < 2**32)


def _run_table(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts of each ``(pred id, gt id)`` pair (0 included) in two flat arrays."""
    n = p.size
    # Objects are spatially coherent, so raster order has long runs of the same pair; reducing
    # to runs first makes the sort below work on a small fraction of the voxels.
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(p[1:], p[:-1], out=start[1:])
    start[1:] |= g[1:] != g[:-1]
    idx = np.flatnonzero(start)
    lengths = np.diff(idx, append=n).astype(np.int64, copy=False)
    return _group_pairs(p[idx], g[idx], lengths)


def _overlap(p: np.ndarray, g: np.ndarray) -> _Overlap:
    """Build the overlap table of two validated label images of equal shape."""
    lead = p.shape[0]
    per_row = math.prod(p.shape[1:])
    step = max(1, _CHUNK_VOXELS // max(per_row, 1))
    parts = []
    if per_row > 0:
        for s in range(0, lead, step):
            ps = np.ascontiguousarray(p[s : s + step]).reshape(-1)
            gs = np.ascontiguousarray(g[s : s + step]).reshape(-1)
            parts.append(_run_table(ps, gs))
    if parts:
        tp = np.concatenate([t[0] for t in parts])
        tg = np.concatenate([t[1] for t in parts])
        tc = np.concatenate([t[2] for t in parts])
        if len(parts) > 1:
            tp, tg, tc = _group_pairs(tp, tg, tc)
    else:
        tp, tg, tc = p.reshape(-1)[:0], g.reshape(-1)[:0], np.zeros(0, np.int64)

    for name, ids in (("pred", tp), ("gt", tg)):
        if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
            raise InputError(f"{name} contains negative labels; use 0 for background, ids > 0")

    def areas(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        uniq, inv = np.unique(ids, return_inverse=True)
        # float64 sums of integer counts are exact below 2**53 voxels
        area = np.rint(np.bincount(inv, weights=tc, minlength=uniq.size)).astype(np.int64)
        off = 1 if uniq.size and uniq[0] == 0 else 0  # ids are >= 0, so 0 sorts first
        return uniq[off:], area[off:], inv - off

    pred_ids, pred_areas, p_idx = areas(tp)
    gt_ids, gt_areas, g_idx = areas(tg)
    p_fg = tp != 0
    g_fg = tg != 0
    both = p_fg & g_fg
    return _Overlap(
        pred_ids=pred_ids,
        pred_areas=pred_areas,
        gt_ids=gt_ids,
        gt_areas=gt_areas,
        pair_pred=p_idx[both],
        pair_gt=g_idx[both],
        pair_inter=tc[both],
        fg_inter=int(tc[both].sum()),
        fg_union=int(tc[p_fg | g_fg].sum()),
    )


def label_overlap(a: ArrayLike, b: ArrayLike) -> _Overlap:
    """Sparse overlap table of two label arrays of one shape (0 = background, ids >= 0).

    Shared by the metrics, slice linking, ortho-plane consensus and block stitching: areas of
    every id, and the voxels shared by every overlapping pair, without dense matrices.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"label arrays differ in shape: {a.shape} vs {b.shape}")
    return _overlap(a, b)


def same_partition(a: ArrayLike, b: ArrayLike) -> bool:
    """True when two label arrays are equal up to a one-to-one relabelling of their ids."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    ov = _overlap(a, b)
    # Same foreground, and every object overlaps exactly one object of the other side fully.
    return (
        ov.pair_inter.size == ov.pred_ids.size == ov.gt_ids.size
        and np.array_equal(ov.pred_areas[ov.pair_pred], ov.pair_inter)
        and np.array_equal(ov.gt_areas[ov.pair_gt], ov.pair_inter)
    )


# --------------------------------------------------------------------------- matching


def _match(ov: _Overlap, match_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-total-IoU matching among pairs with IoU >= match_iou.

    Returns indices into ``ov.pred_ids`` and ``ov.gt_ids`` and the IoUs of the matched pairs,
    sorted by prediction index.
    """
    ious = ov.pair_ious()
    keep = ious >= match_iou
    pi, gi, w = ov.pair_pred[keep], ov.pair_gt[keep], ious[keep]
    if pi.size == 0:
        return pi, gi, w

    # An edge whose two ends have no other candidate is a component of its own and is simply
    # matched. With match_iou > 0.5 that is every edge (two objects cannot both overlap one
    # object by more than half); at 0.5 only exact ties are left over.
    deg_p = np.bincount(pi, minlength=ov.pred_ids.size)
    deg_g = np.bincount(gi, minlength=ov.gt_ids.size)
    lone = (deg_p[pi] == 1) & (deg_g[gi] == 1)
    out_p, out_g, out_w = [pi[lone]], [gi[lone]], [w[lone]]

    if not lone.all():
        rp, rg, rw = pi[~lone], gi[~lone], w[~lone]
        up, rpc = np.unique(rp, return_inverse=True)
        ug, rgc = np.unique(rg, return_inverse=True)
        n_nodes = up.size + ug.size
        graph = coo_matrix((np.ones(rp.size), (rpc, up.size + rgc)), shape=(n_nodes, n_nodes))
        _, comp = connected_components(graph, directed=False)
        edge_comp = comp[rpc]
        order = np.argsort(edge_comp, kind="stable")
        bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
        # One small dense problem per component; components are few and tiny unless match_iou
        # is very low in a crowded image.
        for edges in np.split(order, bounds):
            cp, lp = np.unique(rpc[edges], return_inverse=True)
            cg, lg = np.unique(rgc[edges], return_inverse=True)
            mat = np.zeros((cp.size, cg.size))
            mat[lp, lg] = rw[edges]
            r, c = linear_sum_assignment(mat, maximize=True)
            # the full assignment may use non-candidate cells (weight 0): drop them
            real = mat[r, c] > 0
            out_p.append(up[cp[r[real]]])
            out_g.append(ug[cg[c[real]]])
            out_w.append(mat[r, c][real])

    mp, mg, mw = np.concatenate(out_p), np.concatenate(out_g), np.concatenate(out_w)
    order = np.argsort(mp, kind="stable")
    return mp[order], mg[order], mw[order]


@dataclass(frozen=True)
class Matching:
    """One-to-one matching of predicted and true instances.

    ``pred_ids[i]`` is matched to ``gt_ids[i]`` with IoU ``ious[i]``; ``n_pred`` and ``n_gt``
    count all (matched or not) nonzero ids of each image.
    """

    pred_ids: np.ndarray
    gt_ids: np.ndarray
    ious: np.ndarray
    n_pred: int
    n_gt: int
    match_iou: float = 0.5

    def counts(self, iou_threshold: float = 0.5) -> tuple[int, int, int]:
        """Return ``(TP, FP, FN)`` at ``iou_threshold`` (which must be >= ``match_iou``)."""
        (t,) = _check_thresholds((iou_threshold,), self.match_iou)
        tp = int(np.count_nonzero(self.ious >= t))
        return tp, self.n_pred - tp, self.n_gt - tp


def match_instances(pred: ArrayLike, gt: ArrayLike, match_iou: float = 0.5) -> Matching:
    """Match predicted to true instances, maximising total IoU over pairs with IoU >= match_iou."""
    match_iou = _check_match_iou(match_iou)
    ov = _overlap(*_as_pair(pred, gt))
    mp, mg, mw = _match(ov, match_iou)
    return Matching(
        pred_ids=ov.pred_ids[mp],
        gt_ids=ov.gt_ids[mg],
        ious=mw,
        n_pred=int(ov.pred_ids.size),
        n_gt=int(ov.gt_ids.size),
        match_iou=match_iou,
    )


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class _Counts:
    """Additive counts from which every score follows (summed over slices when pooling)."""

    thresholds: tuple[float, ...]
    n_pred: int
    n_gt: int
    tp: tuple[int, ...]  # one per threshold
    pq_tp: int  # TP of the standard 0.5 matching
    pq_iou_sum: float  # sum of their IoUs
    fg_inter: int
    fg_union: int

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            thresholds=self.thresholds,
            n_pred=self.n_pred + other.n_pred,
            n_gt=self.n_gt + other.n_gt,
            tp=tuple(a + b for a, b in zip(self.tp, other.tp, strict=True)),
            pq_tp=self.pq_tp + other.pq_tp,
            pq_iou_sum=self.pq_iou_sum + other.pq_iou_sum,
            fg_inter=self.fg_inter + other.fg_inter,
            fg_union=self.fg_union + other.fg_union,
        )

    @property
    def has_objects(self) -> bool:
        return self.n_pred > 0 or self.n_gt > 0


def _counts(ov: _Overlap, thresholds: tuple[float, ...], match_iou: float) -> _Counts:
    _, _, ious = _match(ov, match_iou)
    # PQ is defined on the 0.5 matching; reuse ours when it is the same one
    pq_ious = ious if match_iou == 0.5 else _match(ov, 0.5)[2]
    pq_ious = pq_ious[pq_ious >= 0.5]
    return _Counts(
        thresholds=thresholds,
        n_pred=int(ov.pred_ids.size),
        n_gt=int(ov.gt_ids.size),
        tp=tuple(int(np.count_nonzero(ious >= t)) for t in thresholds),
        pq_tp=int(pq_ious.size),
        pq_iou_sum=float(pq_ious.sum()),
        fg_inter=ov.fg_inter,
        fg_union=ov.fg_union,
    )


def _f1(tp: int, n_pred: int, n_gt: int) -> float:
    # TP / (TP + FP/2 + FN/2) with FP = n_pred - TP and FN = n_gt - TP
    return 1.0 if n_pred + n_gt == 0 else 2.0 * tp / (n_pred + n_gt)


def _ap(tp: int, n_pred: int, n_gt: int) -> float:
    denom = n_pred + n_gt - tp  # TP + FP + FN
    return 1.0 if denom == 0 else tp / denom


def _ratio(num: int, den: int, other_side: int) -> float:
    # precision without predictions (or recall without truth) is perfect only if the other
    # side is empty as well
    if den == 0:
        return 1.0 if other_side == 0 else 0.0
    return num / den


def _pq(c: _Counts) -> dict[str, float]:
    rq = _f1(c.pq_tp, c.n_pred, c.n_gt)
    if c.pq_tp:
        sq = c.pq_iou_sum / c.pq_tp
    else:
        sq = 1.0 if c.n_pred + c.n_gt == 0 else 0.0
    return {"pq": sq * rq, "sq": sq, "rq": rq}


def _scores(c: _Counts) -> dict[str, float | int]:
    out: dict[str, float | int] = {"n_pred": c.n_pred, "n_gt": c.n_gt}
    for t, tp in zip(c.thresholds, c.tp, strict=True):
        k = _tkey(t)
        out[f"tp@{k}"] = tp
        out[f"fp@{k}"] = c.n_pred - tp
        out[f"fn@{k}"] = c.n_gt - tp
        out[f"precision@{k}"] = _ratio(tp, c.n_pred, c.n_gt)
        out[f"recall@{k}"] = _ratio(tp, c.n_gt, c.n_pred)
        out[f"f1@{k}"] = _f1(tp, c.n_pred, c.n_gt)
        out[f"ap@{k}"] = _ap(tp, c.n_pred, c.n_gt)
    out.update(_pq(c))
    out["semantic_iou"] = 1.0 if c.fg_union == 0 else c.fg_inter / c.fg_union
    return out


def semantic_iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """IoU of the foregrounds (label > 0); 1.0 when both foregrounds are empty."""
    p, g = _as_pair(pred, gt)
    p_fg = p != 0
    g_fg = g != 0
    union = int(np.count_nonzero(p_fg | g_fg))
    return 1.0 if union == 0 else int(np.count_nonzero(p_fg & g_fg)) / union


def f1_score(
    pred: ArrayLike, gt: ArrayLike, iou_threshold: float = 0.5, match_iou: float = 0.5
) -> float:
    """F1 at ``iou_threshold``: TP / (TP + FP/2 + FN/2); 1.0 when both images are empty."""
    m = match_instances(pred, gt, match_iou)
    tp, _, _ = m.counts(iou_threshold)
    return _f1(tp, m.n_pred, m.n_gt)


def average_precision(
    pred: ArrayLike, gt: ArrayLike, iou_threshold: float = 0.5, match_iou: float = 0.5
) -> float:
    """MitoNet's "AP" at ``iou_threshold``: TP / (TP + FP + FN); 1.0 when both are empty."""
    m = match_instances(pred, gt, match_iou)
    tp, _, _ = m.counts(iou_threshold)
    return _ap(tp, m.n_pred, m.n_gt)


def panoptic_quality(pred: ArrayLike, gt: ArrayLike) -> dict[str, float]:
    """Panoptic quality ``{"pq", "sq", "rq"}`` of the single "object" class at IoU 0.5."""
    c = _counts(_overlap(*_as_pair(pred, gt)), (), 0.5)
    return _pq(c)


def instance_scores(
    pred: ArrayLike,
    gt: ArrayLike,
    thresholds: Iterable[float] = (0.5, 0.75),
    match_iou: float = 0.5,
) -> dict[str, float | int]:
    """All scores from one overlap pass.

    Keys: ``n_pred``, ``n_gt``; for each threshold t (formatted with ``{t:g}``) ``tp@t``,
    ``fp@t``, ``fn@t``, ``precision@t``, ``recall@t``, ``f1@t``, ``ap@t``; then ``pq``, ``sq``,
    ``rq`` and ``semantic_iou``. Values are plain Python ints and floats.
    """
    match_iou = _check_match_iou(match_iou)
    ths = _check_thresholds(thresholds, match_iou)
    return _scores(_counts(_overlap(*_as_pair(pred, gt)), ths, match_iou))


def _relabel_cc(labels: np.ndarray) -> np.ndarray:
    # skimage (not scipy.ndimage) because it keeps touching objects with different ids apart
    from skimage.measure import label

    return label(labels, background=0, connectivity=1)


def as_instances(mask: ArrayLike, connectivity: int = 1) -> np.ndarray:
    """Split a binary mask (or label image) into connected components, one id each.

    Pixels are connected when they are neighbours (``connectivity`` 1 = faces only, up to
    ``ndim`` = also corners) and have the same nonzero value, so a binary mask becomes one id per
    blob and a label image gets each disconnected piece of an object as a separate id.
    """
    from skimage.measure import label

    arr = np.asarray(mask)
    if arr.dtype != np.bool_ and arr.dtype.kind not in "iu":
        raise InputError(
            f"mask has dtype {arr.dtype}; threshold it into a boolean or integer mask first"
        )
    if not 1 <= connectivity <= max(arr.ndim, 1):
        raise InputError(f"connectivity must be in [1, {arr.ndim}], got {connectivity}")
    return label(arr, background=0, connectivity=connectivity)


def evaluate(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    per_slice: bool = False,
    thresholds: Iterable[float] = (0.5, 0.75),
    match_iou: float = 0.5,
    relabel_2d_cc: bool = False,
) -> dict[str, float | int]:
    """Score a prediction against ground truth; returns a JSON-serialisable flat dict.

    Without ``per_slice`` the images are scored as a whole (3D objects for a volume), with the
    keys of :func:`instance_scores`.

    With ``per_slice`` a 3D volume is scored slice by slice along axis 0, each slice as a 2D
    image whose instances are the ids present in it (or, with ``relabel_2d_cc``, the 2D
    connected components of those ids, which suits binary ground truth). The result then holds

    * the pooled scores under the plain keys (``f1@0.5`` ...): TP, FP, FN, object counts, the
      TP IoUs and the foreground voxels are summed over slices before computing the ratios, so
      ``n_pred``/``n_gt`` count 2D instances and ``semantic_iou`` equals the volume's;
    * the mean over slices of every ratio under ``<key>_mean`` (``f1@0.5_mean`` ...). Slices
      with no object in either image are left out of the means (they would score a perfect 1);
      if no slice has an object the means are 1.0;
    * ``n_slices`` and ``n_slices_scored`` (slices that entered the means).
    """
    match_iou = _check_match_iou(match_iou)
    ths = _check_thresholds(thresholds, match_iou)
    p, g = _as_pair(pred, gt)
    if not per_slice:
        if relabel_2d_cc:
            raise InputError(
                "relabel_2d_cc applies to per_slice scoring; use as_instances() to relabel "
                "whole images"
            )
        return _scores(_counts(_overlap(p, g), ths, match_iou))
    if p.ndim != 3:
        raise InputError(f"per_slice scoring needs a 3D volume, got shape {p.shape}")

    per: list[_Counts] = []
    for z in range(p.shape[0]):
        pz, gz = p[z], g[z]
        if relabel_2d_cc:
            pz, gz = _relabel_cc(pz), _relabel_cc(gz)
        per.append(_counts(_overlap(pz, gz), ths, match_iou))

    total = _Counts(ths, 0, 0, (0,) * len(ths), 0, 0.0, 0, 0)
    for c in per:
        total = total + c
    out = _scores(total)

    scored = [_scores(c) for c in per if c.has_objects]
    ratio_keys = [k for k, v in out.items() if isinstance(v, float)]
    for k in ratio_keys:
        out[f"{k}_mean"] = float(np.mean([s[k] for s in scored])) if scored else 1.0
    out["n_slices"] = int(p.shape[0])
    out["n_slices_scored"] = len(scored)
    return out
