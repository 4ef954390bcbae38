"""3D stack inference along one axis (docs/design.md s.3), in memory.

1. Slices along ``axis`` (xy, xz or yz) go through the 2D engine in batches.
2. Semantic probabilities are median-filtered across ``median_slices`` neighbouring slices
   (a rolling window of probabilities is kept, never the whole volume's), then each slice is
   post-processed into 2D instances with its own centres and offsets.
3. 2D instances are linked slice to slice: a forward pass matches each slice's objects to the
   previous slice's by IoU with optimal assignment (IoU >= ``slice_link_iou`` links); an
   unmatched object whose intersection with one previous object covers >= ``slice_link_ioa``
   of its own area joins that object. With ``linking="legacy"`` (earlier releases, and
   empanada-napari 1.2.4) a backward pass also joins an object that ends in a slice to the
   object of the next slice that covers >= ``slice_link_ioa`` of it. That rule caused the 3D
   merges of issue 17: a mitochondrion that ends against a neighbour, end to end or side by
   side, became one object with it, even where every 2D slice separates the two (whole
   lucchi_train, 47 objects: 5 merged pairs with it, 3 without, none of them separated by
   the 2D result; docs/models.md). The default ``"separate"`` has no backward pass.
4. Objects smaller than ``min_size`` voxels or with a bounding-box side shorter than
   ``min_extent`` are removed (``border_aware``: objects cut by the volume's border are judged
   by what could be seen of them, :func:`.objects.keep_objects`); ids are relabelled 1..K.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import Cancelled, InputError
from ..jobs import CancelFlag, Progress, is_cancelled
from ..memory import reuse_freed_memory, zeros
from ..objects import keep_objects, resolve_objects, sizes_and_boxes
from ..preprocess import check_image, intensity_range
from ..settings import AXES, LINKING, StackSettings, resolve
from .engine import Engine2D


def id_counts(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, counts): the sorted non-zero ids of ``flat`` (integers >= 0) and their voxel
    counts, by one bincount in linear time, when the ids are small enough for it (the ids
    post-processing produces); else None."""
    top = int(flat.max()) if flat.size else 0
    if top > max(1 << 20, 4 * flat.size):
        return None
    counts = np.bincount(flat, minlength=top + 1)
    counts[0] = 0
    ids = np.flatnonzero(counts)
    return ids, counts[ids]


def present_ids(flat: np.ndarray) -> np.ndarray | None:
    """The sorted non-zero ids of ``flat`` (see :func:`id_counts`), or None."""
    found = id_counts(flat)
    return None if found is None else found[0]


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, dense, counts): the sorted non-zero ids of ``labels``, the image with id
    ``ids[k]`` replaced by ``k + 1`` (uint32) and each id's voxel count. Linear time for the
    small ids post-processing produces."""
    flat = labels.reshape(-1)
    if flat.dtype.kind == "b" or flat.dtype == np.uint64:
        flat = flat.astype(np.int64)  # bincount takes only types that fit int64 safely
    if flat.size and int(flat.min()) < 0:
        raise InputError("labels must be >= 0")
    found = id_counts(flat)
    if found is not None:
        ids, counts = found
        lut = np.zeros(int(ids[-1]) + 1 if ids.size else 1, dtype=np.uint32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
        return ids, lut[labels], counts
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids.size and ids[0] == 0:
        ids = ids[1:]
    else:
        inverse = inverse + 1
    dense = inverse.reshape(labels.shape).astype(np.uint32)
    return ids, dense, np.bincount(dense.reshape(-1), minlength=ids.size + 1)[1:]


def _pair_table(a: np.ndarray, na: int, b: np.ndarray, nb: int):
    """Overlapping (index in a, index in b, voxel count) of two dense label images (1-based
    indices ``1..na`` and ``1..nb``); indices returned 0-based."""
    both = (a > 0) & (b > 0)
    keys = a[both].astype(np.int64) * (nb + 1) + b[both]
    if (na + 1) * (nb + 1) <= 1 << 22:
        counts = np.bincount(keys, minlength=(na + 1) * (nb + 1))
        keys = np.flatnonzero(counts)
        counts = counts[keys]
    else:
        keys, counts = np.unique(keys, return_counts=True)
    return keys // (nb + 1) - 1, keys % (nb + 1) - 1, counts


def matched_pairs(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Indices of the pairs ``(a[k], b[k])`` in a maximum-total-weight matching.

    The optimal assignment is solved on each connected component of the pair graph on its
    own: objects overlap only their neighbours, so components are tiny and the cost stays
    linear in the number of objects instead of cubic (a slice with thousands of objects).
    """
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    n = ua.size + ub.size
    graph = coo_matrix((np.ones(a.size, np.int8), (ia, ib + ua.size)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[ia]
    single = np.bincount(pair_comp)[pair_comp] == 1
    chosen = [np.flatnonzero(single)]  # a component of one pair: that pair
    multi = np.flatnonzero(~single)
    multi = multi[np.argsort(pair_comp[multi], kind="stable")]
    for group in np.split(multi, np.flatnonzero(np.diff(pair_comp[multi])) + 1):
        if group.size == 0:
            continue
        rows, r = np.unique(ia[group], return_inverse=True)
        cols, c = np.unique(ib[group], return_inverse=True)
        index = np.full((rows.size, cols.size), -1, dtype=np.int64)
        index[r, c] = group
        w = np.zeros(index.shape)
        w[r, c] = weight[group]
        rr, cc = linear_sum_assignment(-w)
        picked = index[rr, cc]
        chosen.append(picked[picked >= 0])  # a row may be left with a non-pair
    return np.sort(np.concatenate(chosen))


class SliceLinker:
    """Slice-to-slice linking of 2D instances into 3D objects, one slice at a time.

    Feed the 2D labels of slices 0, 1, 2, ... to :meth:`add` (see the module docstring for
    the rules); each call costs time linear in the slice's pixels. :meth:`finish` applies the
    backward-pass joins and the size filters and returns the 3D labels. Only one uint32 copy
    of the stack is kept (``out`` when given), plus a few numbers per object.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        iou_thr: float = 0.25,
        ioa_thr: float = 0.25,
        out: np.ndarray | None = None,
        linking: str = "separate",
    ) -> None:
        if linking not in LINKING:
            raise InputError(f"linking must be one of {LINKING}, got {linking!r}")
        self.iou_thr, self.ioa_thr = iou_thr, ioa_thr
        self.backward = linking == "legacy"
        self.dense = zeros(shape, np.uint32) if out is None else out
        self.fids: list[np.ndarray] = []  # per slice: dense index - 1 -> forward id
        self.next_id = 1
        # Per slice: voxel count, box start and box stop of each of its forward ids.
        self._stats: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._joins: list[np.ndarray] = []  # (2, k) forward ids joined by the backward pass

    def add(self, labels: np.ndarray) -> None:
        """Link the next slice's 2D instance labels (H, W), ids >= 0, to the previous one."""
        z = len(self.fids)
        ids_cur, cur, area_cur = _dense_ids(np.asarray(labels))
        nc = ids_cur.size
        lut = np.zeros(nc + 1, dtype=np.int64)  # dense index -> forward id
        if z > 0 and nc and self.fids[-1].size:
            prev, prev_fids = self.dense[z - 1], self.fids[-1]
            npv = prev_fids.size
            pi, ci, inter = _pair_table(prev, npv, cur, nc)
            area_prev = self._stats[-1][0]
            if inter.size:
                self._link_forward(lut, pi, ci, inter, area_prev, area_cur, prev_fids)
        unmatched = np.flatnonzero(lut[1:] == 0) + 1
        lut[unmatched] = np.arange(self.next_id, self.next_id + unmatched.size)
        self.next_id += unmatched.size
        # This slice in forward ids, stored densely (several 2D objects may share one id).
        fids, fd = np.unique(lut[1:], return_inverse=True)
        fd_lut = np.zeros(nc + 1, dtype=np.uint32)
        fd_lut[1:] = fd.astype(np.uint32) + 1
        self.dense[z] = fd_lut[cur]
        self.fids.append(fids)
        if self.backward and z > 0 and nc and self.fids[-2].size:
            self._link_backward(pi, fd_lut[ci + 1].astype(np.int64) - 1, inter, area_prev)
        # Each forward id's area: its 2D objects' areas summed (no pass over the slice).
        area = np.bincount(fd, weights=area_cur, minlength=fids.size).astype(np.int64)
        self._measure(z, area)

    def _link_forward(self, lut, pi, ci, inter, area_prev, area_cur, prev_fids) -> None:
        # Optimal assignment on the IoU of overlapping objects, pairs >= iou_thr linked.
        iou = inter / (area_prev[pi] + area_cur[ci] - inter)
        matched = matched_pairs(pi, ci, iou)
        matched = matched[iou[matched] >= self.iou_thr]
        lut[ci[matched] + 1] = prev_fids[pi[matched]]
        # Unmatched objects covered enough by one previous object join it (the previous
        # object of largest intersection; ties go to the smaller id).
        order = np.lexsort((pi, -inter, ci))
        first = np.ones(order.size, dtype=bool)
        first[1:] = ci[order][1:] != ci[order][:-1]
        best = order[first]
        join = (inter[best] >= self.ioa_thr * area_cur[ci[best]]) & (lut[ci[best] + 1] == 0)
        lut[ci[best[join]] + 1] = prev_fids[pi[best[join]]]

    def _link_backward(self, pi, fi, inter, area_prev) -> None:
        """An object of slice z - 1 that does not continue into slice z joins the object of
        slice z it overlaps most, when that covers >= ioa_thr of its area."""
        prev_fids, cur_fids = self.fids[-2], self.fids[-1]
        n_cur = cur_fids.size
        # Pair table in forward ids (2D objects that got one id are summed).
        key = pi * n_cur + fi
        key, where = np.unique(key, return_inverse=True)
        inter = np.bincount(where, weights=inter)
        a, b = key // n_cur, key % n_cur
        ends = ~np.isin(prev_fids[a], cur_fids)
        a, b, inter = a[ends], b[ends], inter[ends]
        if a.size == 0:
            return
        # Largest intersection per object (ties: the smallest forward id, as b is sorted).
        order = np.lexsort((b, -inter, a))
        first = np.ones(order.size, dtype=bool)
        first[1:] = a[order][1:] != a[order][:-1]
        pick = order[first]
        ok = inter[pick] >= self.ioa_thr * area_prev[a[pick]]
        self._joins.append(np.stack([prev_fids[a[pick][ok]], cur_fids[b[pick][ok]]]))

    def _measure(self, z: int, area: np.ndarray) -> None:
        fids, fd = self.fids[-1], self.dense[z]
        boxes = ndi.find_objects(fd, max_label=fids.size)
        lo = np.array([[z, b[0].start, b[1].start] for b in boxes], dtype=np.int64)
        hi = np.array([[z + 1, b[0].stop, b[1].stop] for b in boxes], dtype=np.int64)
        self._stats.append((area, lo.reshape(-1, 3), hi.reshape(-1, 3)))

    def finish(
        self, min_size: int = 0, min_extent: int = 0, border_aware: bool = False
    ) -> np.ndarray:
        """The 3D labels (uint32, ids 1..K in order of each object's first forward id), in
        place of the stored slices, with the backward joins and the size filters applied
        (border-aware: see :func:`.objects.keep_objects`)."""
        joins = np.concatenate(self._joins, axis=1) if self._joins else np.zeros((2, 0), int)
        stats = self._stats or [(np.zeros(0, np.int64),) + (np.zeros((0, 3), np.int64),) * 2]
        by_fid, _ = resolve_objects(
            self.next_id,
            (joins[0], joins[1]),
            np.concatenate(self.fids) if self.fids else np.zeros(0, np.int64),
            np.concatenate([st[0] for st in stats]),
            np.concatenate([st[1] for st in stats]),
            np.concatenate([st[2] for st in stats]),
            min_size,
            min_extent,
            self.dense.shape if border_aware else None,
        )
        for z, fids in enumerate(self.fids):
            lut = np.zeros(fids.size + 1, dtype=np.uint32)
            lut[1:] = by_fid[fids]
            self.dense[z] = lut[self.dense[z]]
        return self.dense


def link_slices(
    slices: np.ndarray, iou_thr: float = 0.25, ioa_thr: float = 0.25, linking: str = "separate"
) -> np.ndarray:
    """Link per-slice 2D instances (Z, H, W) into 3D objects; returns new uint32 labels 1..K.

    See the module docstring for the rules; :class:`SliceLinker` does the work slice by slice.
    """
    slices = np.asarray(slices)
    linker = SliceLinker(slices.shape, iou_thr, ioa_thr, linking=linking)
    for plane in slices:
        linker.add(plane)
    return linker.finish()


def filter_objects(
    labels: np.ndarray, min_size: int = 0, min_extent: int = 0, border_aware: bool = False
) -> np.ndarray:
    """Drop objects below ``min_size`` voxels or with a bounding-box side < ``min_extent``
    (border-aware: see :func:`.objects.keep_objects`) and relabel the rest 1..K (uint32, in
    increasing order of their old ids)."""
    ids, dense, counts = _dense_ids(np.asarray(labels))
    size, lo, hi = sizes_and_boxes(dense, ids.size, size=counts)
    lut = _kept_ids(size, lo, hi, min_size, min_extent, dense.shape if border_aware else None)
    return lut[dense]


def filter_labelled(
    labels: np.ndarray,
    where: np.ndarray,
    min_size: int = 0,
    min_extent: int = 0,
    border_aware: bool = False,
) -> np.ndarray:
    """:func:`filter_objects` in place for uint32 ``labels`` that are 0 outside the boolean
    mask ``where``: counts and relabelling touch only the voxels of ``where`` (a few % of a
    volume), and one pass over the volume finds the boxes. Returns ``labels`` (a new array
    for other types or very large ids)."""
    values = labels[where]
    found = id_counts(values) if labels.dtype == np.uint32 else None
    if found is None:  # not uint32, or ids too large to count by bincount: a new array
        return filter_objects(labels, min_size, min_extent, border_aware)
    ids, counts = found
    top = int(ids[-1]) if ids.size else 0
    size = np.zeros(top, np.int64)
    size[ids - 1] = counts
    size, lo, hi = sizes_and_boxes(labels, top, size=size)
    lut = _kept_ids(size, lo, hi, min_size, min_extent, labels.shape if border_aware else None)
    labels[where] = lut[values]
    return labels


def _kept_ids(size, lo, hi, min_size, min_extent, shape) -> np.ndarray:
    """New id of ids 0..n (0 stays 0): the objects :func:`.objects.keep_objects` keeps,
    numbered 1..K in order; the others 0."""
    keep = keep_objects(size, lo, hi, min_size, min_extent, shape)
    new = np.zeros(size.size + 1, dtype=np.uint32)
    new[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return new


def median_of(planes: list[torch.Tensor]) -> torch.Tensor:
    """Element-wise median of an odd number of tensors of one shape.

    An odd-even transposition sort made of element-wise min/max: for the few planes of a
    median window it is many times faster than ``torch.median`` over a stacked dimension.
    """
    v = list(planes)
    for p in range(len(v)):
        for i in range(p % 2, len(v) - 1, 2):
            v[i], v[i + 1] = torch.minimum(v[i], v[i + 1]), torch.maximum(v[i], v[i + 1])
    return v[len(v) // 2]


@reuse_freed_memory()
def segment_stack_3d(
    volume,
    engine: Engine2D,
    settings: StackSettings | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    pipeline: bool | None = None,
    **params,
) -> np.ndarray:
    """3D instance segmentation of ``volume`` (Z, Y, X) by stack inference along one axis.

    Returns uint32 labels (Z, Y, X) with ids 1..K. ``params`` are :class:`StackSettings`
    fields. ``value_range`` is the intensity range of the whole volume (computed from
    ``volume`` when not given; blocks of a larger volume pass the volume's).
    ``progress(done, total)`` counts slices; ``cancel`` is checked between batches.
    ``pipeline`` post-processes on a worker thread while the network runs (default: on CUDA).
    """
    settings = resolve(params, stack=settings)["stack"]
    check_image(volume, ndim=(3,), what="volume")
    order = AXES[settings.axis]
    view = np.asarray(volume).transpose(order)
    if value_range is None:
        value_range = intensity_range(volume)
    n = view.shape[0]
    half = settings.median_slices // 2
    bs = engine.default_batch_size(view.shape[1:])
    linker = SliceLinker(
        view.shape, settings.slice_link_iou, settings.slice_link_ioa, linking=settings.linking
    )
    window: deque = deque()  # (index, sem_prob, raw batch outputs, index in batch)

    def emit(i: int) -> None:
        by_index = {w[0]: w for w in window}
        # Edge slices repeat the first/last slice (scipy's mode="nearest").
        neighbours = [min(max(k, 0), n - 1) for k in range(i - half, i + half + 1)]
        entry = by_index[i]
        if half == 0:
            prob = entry[1]
        else:
            prob = median_of([by_index[k][1] for k in neighbours])
        linker.add(engine.postprocess(entry[2], entry[3], sem_prob=prob))

    pending = 0  # next slice index to post-process

    def consume(start: int, raw, count: int) -> None:
        # Runs on the post-processing thread, one batch after another, in order.
        nonlocal pending
        for j in range(count):
            window.append((start + j, raw.sem_prob[j], raw, j))
        # Post-process every slice whose median window is complete.
        last_loaded = start + count - 1
        while pending <= n - 1 and (pending + half <= last_loaded or last_loaded == n - 1):
            emit(pending)
            pending += 1
            while window and window[0][0] < pending - half:
                window.popleft()

    # On a GPU, post-processing and linking of batch k run on a worker thread while the
    # network runs on batch k + 1 (at most two batches wait). On the CPU both would share
    # the same cores, and measured slower than running them one after the other.
    pool = None
    if pipeline or (pipeline is None and engine.device.type == "cuda"):
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="empanada-stack")
    queued: deque = deque()
    try:
        for start in range(0, n, bs):
            if is_cancelled(cancel):
                raise Cancelled(f"Cancelled after {start} of {n} slices.")
            batch = engine.normalize(view[start : start + bs], value_range)
            raw = engine.infer(batch)
            if pool is None:
                consume(start, raw, batch.shape[0])
            else:
                queued.append(pool.submit(consume, start, raw, batch.shape[0]))
            while len(queued) > 1:
                queued.popleft().result()  # re-raises a post-processing error here
            if progress is not None:
                progress(min(start + bs, n), n)
        while queued:
            queued.popleft().result()
    finally:
        if pool is not None:
            for future in queued:
                future.cancel()
            pool.shutdown(wait=True)
    labels = linker.finish(settings.min_size, settings.min_extent, settings.border_aware)
    inverse_order = np.argsort(order)
    return np.ascontiguousarray(labels.transpose(inverse_order))
