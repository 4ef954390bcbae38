"""3D stack inference along one axis (DESIGN.md s.4), in memory.

1. Slices along ``axis`` (xy, xz or yz) go through the 2D engine in batches.
2. Semantic probabilities are median-filtered across ``median_slices`` neighbouring slices
   (a rolling window of probabilities is kept, never the whole volume's), then each slice is
   post-processed into 2D instances with its own centres and offsets.
3. 2D instances are linked slice to slice: a forward pass matches each slice's objects to the
   previous slice's by IoU with optimal assignment (IoU >= ``iou_thr`` links); an unmatched
   object whose intersection with one previous object covers >= ``ioa_thr`` of its own area
   joins that object. A backward pass applies the same intersection rule to objects that end
   in a slice, joining them to the object they overlap in the next slice.
4. Objects smaller than ``min_size`` voxels or with a bounding-box side shorter than
   ``min_extent`` are removed; ids are relabelled 1..K.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

from ..errors import Cancelled, InputError
from ..preprocess import check_image, intensity_range
from .engine import CancelFlag, Engine2D, ProgressCallback, is_cancelled

AXES = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}


@dataclass
class StackSettings:
    """Parameters of 3D stack inference (defaults from DESIGN.md s.4)."""

    axis: str = "xy"
    median_slices: int = 3
    min_size: int = 500
    min_extent: int = 5
    iou_thr: float = 0.25
    ioa_thr: float = 0.25

    def validate(self) -> StackSettings:
        if self.axis not in AXES:
            raise InputError(f"axis must be one of {sorted(AXES)}, got {self.axis!r}")
        if self.median_slices < 1 or self.median_slices > 11 or self.median_slices % 2 == 0:
            raise InputError(f"median_slices must be odd, 1..11, got {self.median_slices}")
        if self.min_size < 0 or self.min_extent < 0:
            raise InputError("min_size and min_extent must be >= 0")
        if not (0 < self.iou_thr <= 1 and 0 < self.ioa_thr <= 1):
            raise InputError("iou_thr and ioa_thr must be in (0, 1]")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _overlaps(a: np.ndarray, b: np.ndarray):
    """Overlapping (id_a, id_b, count) pairs of two label images, and each id's area."""
    fg = (a > 0) & (b > 0)
    pairs, counts = np.unique(np.stack([a[fg], b[fg]]), axis=1, return_counts=True)
    ids_a, area_a = np.unique(a[a > 0], return_counts=True)
    ids_b, area_b = np.unique(b[b > 0], return_counts=True)
    return pairs, counts, dict(zip(ids_a, area_a, strict=True)), (ids_b, area_b)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def link_slices(slices: np.ndarray, iou_thr: float = 0.25, ioa_thr: float = 0.25) -> np.ndarray:
    """Link per-slice 2D instances (Z, H, W) into 3D objects; returns new int64 labels.

    See the module docstring for the rules. The loop is over slices; every slice pair is
    handled with vectorised overlap counting and one optimal assignment.
    """
    out = np.zeros(slices.shape, dtype=np.int64)
    next_id = 1
    first = slices[0]
    ids = np.unique(first[first > 0])
    lut = dict(zip(ids.tolist(), range(next_id, next_id + len(ids)), strict=True))
    next_id += len(ids)
    out[0] = _apply(first, lut)
    for z in range(1, slices.shape[0]):
        prev, cur = out[z - 1], slices[z]
        pairs, inter, area_prev, (ids_cur, area_cur) = _overlaps(prev, cur)
        lut = {}
        if pairs.shape[1]:
            prev_ids, prev_idx = np.unique(pairs[0], return_inverse=True)
            cur_ids_o, cur_idx = np.unique(pairs[1], return_inverse=True)
            a_prev = np.array([area_prev[i] for i in prev_ids.tolist()], dtype=np.float64)
            cur_area_map = dict(zip(ids_cur.tolist(), area_cur.tolist(), strict=True))
            a_cur = np.array([cur_area_map[i] for i in cur_ids_o.tolist()], dtype=np.float64)
            iou = np.zeros((len(prev_ids), len(cur_ids_o)))
            iou[prev_idx, cur_idx] = inter / (a_prev[prev_idx] + a_cur[cur_idx] - inter)
            rows, cols = linear_sum_assignment(-iou)
            keep = iou[rows, cols] >= iou_thr
            for r, c in zip(rows[keep], cols[keep], strict=True):
                lut[int(cur_ids_o[c])] = int(prev_ids[r])
            # Unmatched objects covered enough by one previous object join it.
            inter_m = np.zeros_like(iou)
            inter_m[prev_idx, cur_idx] = inter
            best = inter_m.argmax(axis=0)
            ioa = inter_m[best, np.arange(len(cur_ids_o))] / a_cur
            for c in np.nonzero(ioa >= ioa_thr)[0]:
                lut.setdefault(int(cur_ids_o[c]), int(prev_ids[best[c]]))
        new = [i for i in ids_cur.tolist() if i not in lut]
        lut.update(zip(new, range(next_id, next_id + len(new)), strict=True))
        next_id += len(new)
        out[z] = _apply(cur, lut)
    # Backward pass: an object that ends in slice z joins what it overlaps in z + 1.
    uf = _UnionFind()
    for z in range(slices.shape[0] - 2, -1, -1):
        cur, nxt = out[z], out[z + 1]
        pairs, inter, area_cur, _ = _overlaps(cur, nxt)
        if not pairs.shape[1]:
            continue
        continuing = set(np.unique(nxt[nxt > 0]).tolist())
        order = np.argsort(-inter, kind="stable")
        seen: set[int] = set()
        for k in order:
            a, b = int(pairs[0, k]), int(pairs[1, k])
            if a in seen or a in continuing:
                continue
            seen.add(a)
            if inter[k] / area_cur[a] >= ioa_thr:
                uf.union(a, b)
    if uf.parent:
        ids = np.unique(out[out > 0])
        roots = np.array([uf.find(int(i)) for i in ids], dtype=np.int64)
        out = _apply(out, dict(zip(ids.tolist(), roots.tolist(), strict=True)))
    return out


def _apply(labels: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    """Map ids through ``lut`` (ids not in it become 0), vectorised with searchsorted."""
    out = np.zeros(labels.shape, dtype=np.int64)
    if not lut:
        return out
    keys = np.fromiter(lut.keys(), dtype=np.int64)
    vals = np.fromiter(lut.values(), dtype=np.int64)
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    fg = labels > 0
    flat = labels[fg].astype(np.int64)
    pos = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
    out[fg] = np.where(keys[pos] == flat, vals[pos], 0)
    return out


def filter_objects(labels: np.ndarray, min_size: int = 0, min_extent: int = 0) -> np.ndarray:
    """Drop objects below ``min_size`` voxels or with any bounding-box side < ``min_extent``
    and relabel the rest 1..K (uint32, in increasing order of their old ids)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    keep = np.bincount(inverse.ravel(), minlength=len(ids)) >= min_size
    if min_extent > 0:
        # find_objects skips label 0, so shift: box k belongs to unique index k.
        boxes = ndi.find_objects(inverse + 1)
        short = [b is not None and min(s.stop - s.start for s in b) < min_extent for b in boxes]
        keep &= ~np.asarray(short, dtype=bool)
    keep[ids == 0] = False
    new = np.zeros(len(ids), dtype=np.uint32)
    new[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return new[inverse]


def segment_stack_3d(
    volume,
    engine: Engine2D,
    settings: StackSettings | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag = None,
    **params,
) -> np.ndarray:
    """3D instance segmentation of ``volume`` (Z, Y, X) by stack inference along one axis.

    Returns uint32 labels (Z, Y, X) with ids 1..K. ``params`` are :class:`StackSettings`
    fields. ``value_range`` is the intensity range of the whole volume (computed from
    ``volume`` when not given; blocks of a larger volume pass the volume's).
    ``progress(done, total)`` counts slices; ``cancel`` is checked between batches.
    """
    from dataclasses import replace

    settings = replace(settings or StackSettings(), **params).validate()
    check_image(volume, ndim=(3,), what="volume")
    order = AXES[settings.axis]
    view = np.asarray(volume).transpose(order)
    if value_range is None:
        value_range = intensity_range(volume)
    n = view.shape[0]
    half = settings.median_slices // 2
    bs = engine.default_batch_size()
    slices = np.zeros(view.shape, dtype=np.uint32)
    window: deque = deque()  # (index, sem_prob, raw batch outputs, index in batch)

    def emit(i: int) -> None:
        by_index = {w[0]: w for w in window}
        # Edge slices repeat the first/last slice (scipy's mode="nearest").
        neighbours = [min(max(k, 0), n - 1) for k in range(i - half, i + half + 1)]
        entry = by_index[i]
        if half == 0:
            prob = entry[1]
        else:
            prob = torch.stack([by_index[k][1] for k in neighbours]).median(dim=0).values
        slices[i] = engine.postprocess(entry[2], entry[3], sem_prob=prob)

    pending = 0  # next slice index to post-process
    for start in range(0, n, bs):
        if is_cancelled(cancel):
            raise Cancelled(f"Cancelled after {start} of {n} slices.")
        batch = engine.normalize(view[start : start + bs], value_range)
        raw = engine.infer(batch)
        for j in range(batch.shape[0]):
            window.append((start + j, raw.sem_prob[j], raw, j))
        # Post-process every slice whose median window is complete.
        last_loaded = start + batch.shape[0] - 1
        while pending <= n - 1 and (pending + half <= last_loaded or last_loaded == n - 1):
            emit(pending)
            pending += 1
            while window and window[0][0] < pending - half:
                window.popleft()
        if progress is not None:
            progress(min(start + bs, n), n)
    linked = link_slices(slices, settings.iou_thr, settings.ioa_thr)
    labels = filter_objects(linked, settings.min_size, settings.min_extent)
    inverse_order = np.argsort(order)
    return np.ascontiguousarray(labels.transpose(inverse_order))
