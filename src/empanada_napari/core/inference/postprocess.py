"""Panoptic post-processing of MitoNet outputs (docs/design.md s.3), vectorised in torch.

No step loops over instances: centres come from one max-pool, every thing pixel votes in one
batched nearest-centre search (chunked only to bound memory), and instance/class bookkeeping
uses ``unique``/``bincount``. The same functions run on CPU and GPU tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import InputError

#: Largest (pixels x centres) distance block evaluated at once (~64 MB of float32).
_ASSIGN_BLOCK = 1 << 24


def semantic_probabilities(sem_logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid (one channel) or softmax (several channels) over dim -3, as float32."""
    logits = sem_logits.float()
    if logits.shape[-3] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-3)


def semantic_classes(
    sem_prob: torch.Tensor, confidence_thr: float = 0.5, labels: Sequence[int] = (1,)
) -> torch.Tensor:
    """Class id per pixel (0 = background) from probabilities of shape (C, H, W).

    One channel: class ``labels[0]`` where the probability is >= ``confidence_thr``. Several
    channels (channel 0 = background): the arg-max class where its probability is >=
    ``confidence_thr``, else background.
    """
    if sem_prob.shape[0] == 1:
        return (sem_prob[0] >= confidence_thr).long() * int(labels[0])
    conf, cls = sem_prob.max(dim=0)
    return torch.where(conf >= confidence_thr, cls, torch.zeros_like(cls))


def find_centers(
    ctr_hmp: torch.Tensor,
    threshold: float = 0.1,
    min_distance_object_centers: int = 3,
    valid_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Instance centres as a (K, 2) long tensor of (y, x) grid positions.

    Heat-map values below ``threshold`` are dropped; a centre is a pixel equal to the max of
    its ``min_distance_object_centers`` neighbourhood (rounded up to odd) and > 0.
    ``valid_shape`` limits
    centres to the top-left region that is real image (not padding).
    """
    hmp = ctr_hmp.reshape(ctr_hmp.shape[-2:]).float()
    hmp = torch.where(hmp >= threshold, hmp, torch.zeros_like(hmp))
    if valid_shape is not None:
        hmp[valid_shape[0] :, :] = 0
        hmp[:, valid_shape[1] :] = 0
    k = max(1, int(min_distance_object_centers))
    k += 1 - k % 2
    pooled = F.max_pool2d(hmp[None, None], kernel_size=k, stride=1, padding=k // 2)[0, 0]
    peaks = (hmp == pooled) & (hmp > 0)
    # Exactly equal maxima within one window (a plateau, e.g. a symmetric peak after x4
    # bilinear upsampling) would each become a centre and split the object: keep only the
    # first in raster order. float64 holds every linear index exactly.
    order = torch.arange(hmp.numel(), device=hmp.device, dtype=torch.float64).reshape(hmp.shape)
    rank = torch.where(peaks, -order, torch.full_like(order, -math.inf))
    first = F.max_pool2d(rank[None, None], kernel_size=k, stride=1, padding=k // 2)[0, 0]
    return torch.nonzero(peaks & (rank == first))


def assign_to_centers(votes: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre for each vote; votes (M, 2) and centres (K, 2), float."""
    if centers.shape[0] == 0:
        raise InputError("assign_to_centers needs at least one centre.")
    step = max(1, _ASSIGN_BLOCK // centers.shape[0])
    out = torch.empty(votes.shape[0], dtype=torch.long, device=votes.device)
    for start in range(0, votes.shape[0], step):  # loop over pixel blocks, not instances
        block = votes[start : start + step]
        out[start : start + step] = torch.cdist(block, centers).argmin(dim=1)
    return out


def _grid_positions(idx: torch.Tensor, stride: int) -> torch.Tensor:
    # A grid cell of a 1/stride map is centred on full-resolution pixel stride*i + (stride-1)/2.
    return idx.float() * stride + (stride - 1) / 2.0


def instance_ids(
    thing: torch.Tensor,
    ctr_hmp: torch.Tensor,
    offsets: torch.Tensor,
    *,
    center_confidence_thr: float = 0.1,
    min_distance_object_centers: int = 3,
    offset_scale: float = 1.0,
    valid_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Group thing pixels into instances 1..K (0 = none) at the resolution of ``thing``.

    ``ctr_hmp`` (h, w) and ``offsets`` (2, h, w) live on a grid ``stride = H / h`` times
    coarser than ``thing`` (H, W): 1 for "fine boundaries", 4 (x the downsampling factor) for
    the default coarse grouping, which votes once per grid cell and copies the result to the
    cell's pixels. ``offset_scale`` converts offsets to ``thing`` pixels (the downsampling).
    Thing pixels whose cell has no centre at all stay 0 (as in Panoptic-DeepLab).
    """
    height, width = thing.shape
    h, w = ctr_hmp.shape[-2:]
    stride = height // h
    if stride * h != height or stride * w != width:
        raise InputError(f"Thing mask {tuple(thing.shape)} is not a multiple of grid {(h, w)}.")
    grid_valid = None
    if valid_shape is not None:
        grid_valid = (-(-valid_shape[0] // stride), -(-valid_shape[1] // stride))
    centers = find_centers(ctr_hmp, center_confidence_thr, min_distance_object_centers, grid_valid)
    ids = torch.zeros((height, width), dtype=torch.long, device=thing.device)
    if centers.shape[0] == 0 or not bool(thing.any()):
        return ids
    if stride > 1:
        cell_has_thing = F.max_pool2d(thing[None, None].float(), stride, stride)[0, 0] > 0
    else:
        cell_has_thing = thing
    ys, xs = torch.nonzero(cell_has_thing, as_tuple=True)
    off = offsets.reshape(2, h, w)[:, ys, xs].float().T * offset_scale
    votes = torch.stack((_grid_positions(ys, stride), _grid_positions(xs, stride)), 1) + off
    nearest = assign_to_centers(votes, _grid_positions(centers, stride))
    grid = torch.zeros((h, w), dtype=torch.long, device=thing.device)
    grid[ys, xs] = nearest + 1
    if stride > 1:
        grid = grid.repeat_interleave(stride, 0).repeat_interleave(stride, 1)
    return torch.where(thing, grid, ids)


def panoptic_labels(
    sem_prob: torch.Tensor,
    ctr_hmp: torch.Tensor,
    offsets: torch.Tensor,
    *,
    confidence_thr: float = 0.5,
    center_confidence_thr: float = 0.1,
    min_distance_object_centers: int = 3,
    thing_list: Sequence[int] = (1,),
    labels: Sequence[int] = (1,),
    label_divisor: int = 10000,
    stuff_area: int = 64,
    semantic_only: bool = False,
    offset_scale: float = 1.0,
    valid_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Panoptic label image (H, W) int64 from semantic probabilities (C, H, W) and the
    instance maps: thing instances get ``class_id * label_divisor + k`` (k = 1, 2, ... in
    raster order of their first pixel), stuff classes ``class_id * label_divisor`` when at
    least ``stuff_area`` pixels, background 0. With ``semantic_only`` the class ids alone.
    The output is cropped to ``valid_shape`` when given.
    """
    cls = semantic_classes(sem_prob, confidence_thr, labels)
    if valid_shape is not None:
        cls[valid_shape[0] :, :] = 0
        cls[:, valid_shape[1] :] = 0
    if semantic_only:
        out = cls
    else:
        if len(thing_list) == 1:  # the usual case; isin costs a sort
            thing = cls == int(thing_list[0])
        else:
            things = torch.tensor(list(thing_list), device=cls.device, dtype=cls.dtype)
            thing = torch.isin(cls, things)
        inst = instance_ids(
            thing,
            ctr_hmp,
            offsets,
            center_confidence_thr=center_confidence_thr,
            min_distance_object_centers=min_distance_object_centers,
            offset_scale=offset_scale,
            valid_shape=valid_shape,
        )
        out = _merge_semantic_and_instances(cls, thing, inst, label_divisor, stuff_area)
    if valid_shape is not None:
        out = out[: valid_shape[0], : valid_shape[1]]
    return out


def _merge_semantic_and_instances(
    cls: torch.Tensor,
    thing: torch.Tensor,
    inst: torch.Tensor,
    label_divisor: int,
    stuff_area: int,
) -> torch.Tensor:
    out = torch.zeros_like(cls)
    has_inst = inst > 0
    if bool(has_inst.any()):
        flat_inst = inst[has_inst]
        flat_cls = cls[has_inst]
        # Consecutive instance numbers in raster order of each instance's first pixel. Ids
        # are centre indices 1..K, so a table of K + 1 entries replaces a sort of the pixels.
        n_ids = int(flat_inst.max()) + 1
        first = torch.full((n_ids,), flat_inst.numel(), dtype=torch.long, device=inst.device)
        positions = torch.arange(flat_inst.numel(), device=inst.device)
        first = first.scatter_reduce(0, flat_inst, positions, reduce="amin")
        order = torch.argsort(first, stable=True)  # absent ids (first = numel) sort last
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, n_ids + 1, device=order.device)
        k = rank[flat_inst]
        # One class per instance: the majority class of its pixels (matters for C > 1).
        n_cls = int(cls.max()) + 1
        votes = torch.bincount(k * n_cls + flat_cls, minlength=(n_ids + 1) * n_cls)
        inst_cls = votes.reshape(-1, n_cls).argmax(dim=1)
        out[has_inst] = inst_cls[k] * label_divisor + k
    stuff = (cls > 0) & ~thing
    if bool(stuff.any()):
        areas = torch.bincount(cls[stuff])
        keep = areas[cls[stuff]] >= stuff_area
        out[stuff] = torch.where(keep, cls[stuff] * label_divisor, torch.zeros_like(cls[stuff]))
    return out


# ----------------------------------------------------------------------------------------
# Label clean-up (numpy / scipy; 2D or 3D)


def _face_pairs(
    x_img: np.ndarray, y_img: np.ndarray, different: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Values (x, y) of ``x_img`` and ``y_img`` at face-neighbouring pixels, along every axis
    and in both orders, where both are > 0 (and, with ``different``, x != y): one pair per
    shared pixel face."""
    xs, ys = [], []
    for axis in range(x_img.ndim):
        after = [slice(None)] * x_img.ndim
        before = [slice(None)] * x_img.ndim
        after[axis], before[axis] = slice(1, None), slice(None, -1)
        orders = [(tuple(after), tuple(before))]
        if y_img is not x_img:  # one image: the other order is the same pairs swapped
            orders.append((tuple(before), tuple(after)))
        for sa, sb in orders:
            x, y = x_img[sa], y_img[sb]
            sel = (x > 0) & (y > 0)
            if different:
                sel &= x != y
            x, y = x[sel], y[sel]
            xs.append(x)
            ys.append(y)
            if y_img is x_img:
                xs.append(y)
                ys.append(x)
    return np.concatenate(xs), np.concatenate(ys)


def _pieces(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The face-connected pieces of every id: ``(pieces, ids, order, largest)``.

    ``pieces`` numbers them 1..n (0 = background), ``ids[k]`` is piece k's id (int64,
    ``ids[0] = 0``), ``order`` lists the pieces sorted by id, then size descending, then
    raster order, and ``largest`` marks in that order the first (largest) piece of each id.
    One connected-components pass over the image, then work per piece.
    """
    from skimage.measure import label as cc_label

    pieces = cc_label(labels, background=0, connectivity=1)
    n = int(pieces.max())
    flat = pieces.reshape(-1)
    ids = np.zeros(n + 1, dtype=np.int64)
    ids[flat] = labels.reshape(-1)  # every pixel of a piece has its id; 0 stays 0
    sizes = np.bincount(flat, minlength=n + 1)
    order = np.lexsort((-sizes[1:], ids[1:])) + 1
    largest = np.ones(n, dtype=bool)
    largest[1:] = ids[order][1:] != ids[order][:-1]
    return pieces, ids, order, largest


def fill_instance_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of every instance (a new array).

    A hole is a background region not connected to the image border; it is filled with the
    id of the instance around it when exactly one instance borders it (a gap enclosed by two
    touching instances belongs to neither and stays background).
    """
    labels = np.asarray(labels)
    out = labels.copy()
    fg = labels > 0
    holes = ndi.binary_fill_holes(fg) & ~fg
    hole_ids, n_holes = ndi.label(holes)
    if n_holes == 0:
        return out
    hole, label = _face_pairs(hole_ids, labels)  # (hole, neighbouring label) pairs
    pairs = np.unique(np.stack([hole, label.astype(np.int64)]), axis=1)
    n_neighbours = np.bincount(pairs[0], minlength=n_holes + 1)
    fill = np.zeros(n_holes + 1, dtype=labels.dtype)
    single = n_neighbours[pairs[0]] == 1
    fill[pairs[0][single]] = pairs[1][single]
    mask = hole_ids > 0
    out[mask] = fill[hole_ids[mask]]
    return out


def absorb_fragments(labels: np.ndarray) -> np.ndarray:
    """Give each stray piece of an instance to the instance it touches (a new array).

    A stray piece is a face-connected piece of an id other than that id's largest; when it
    touches the largest piece of other ids it takes the id of the one it shares the longest
    border with (ties: the one met first in raster order), and this repeats while pieces
    move (a piece that touched only other stray pieces may touch a grown one next). These are
    mostly slivers that grouping on the model's 1/4 grid leaves at the border between two
    objects. Pieces that touch no other object keep their id; the foreground never changes.

    Cost: one connected-components pass over the image and one count of the pixel faces
    between pieces; the rounds then run on the small graph of touching pieces (a merged
    piece's border with another is the sum of its pieces' borders), not on the image.
    """
    labels = np.asarray(labels)
    comps, orig, order, largest = _pieces(labels)
    n = orig.size - 1
    if n == 0 or largest.all():
        return labels.copy()
    a, b = _face_pairs(comps, comps, different=True)
    key, faces = np.unique(a.astype(np.int64) * (n + 1) + b, return_counts=True)
    ea, eb = key // (n + 1), key % (n + 1)  # touching pieces (both orders), shared faces
    ids, mains = orig[order[largest]], order[largest]  # every id (ascending), its largest piece
    lab = orig.copy()
    while True:
        moved = _absorb_round(lab, ids, mains, (ea, eb, faces), n)
        if not moved:
            return lab[comps].astype(labels.dtype, copy=False)


def _absorb_round(
    lab: np.ndarray, ids: np.ndarray, mains: np.ndarray, edges: tuple, n: int
) -> bool:
    """One round of :func:`absorb_fragments` on the piece graph ``edges`` (piece, piece,
    shared faces); updates ``lab`` (the id of each piece) in place and says whether a piece
    moved. ``mains[k]`` is the largest piece of ``ids[k]``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ea, eb, faces = edges
    # Touching pieces of one id are one piece in the image: group them.
    same = lab[ea] == lab[eb]
    graph = coo_matrix((np.ones(same.sum()), (ea[same], eb[same])), shape=(n + 1, n + 1))
    _, group = connected_components(graph, directed=False)
    stray = group != group[mains[np.searchsorted(ids, lab).clip(max=ids.size - 1)]]
    stray[0] = False
    sel = stray[ea] & ~stray[eb]  # a stray piece and the largest piece of another id
    if not sel.any():
        return False
    ga, gb = group[ea[sel]], group[eb[sel]]
    key, inverse = np.unique(ga.astype(np.int64) * (n + 1) + gb, return_inverse=True)
    border = np.bincount(inverse, weights=faces[sel])
    pa, pb = key // (n + 1), key % (n + 1)
    first = np.full(n + 1, n + 1, dtype=np.int64)  # raster order of a group: its first piece
    np.minimum.at(first, group, np.arange(n + 1))
    best = np.lexsort((first[pb], -border, pa))
    head = np.ones(best.size, dtype=bool)
    head[1:] = pa[best][1:] != pa[best][:-1]
    new_id = np.full(n + 1, -1, dtype=np.int64)
    new_id[pa[best][head]] = lab[first[pb[best][head]]]
    move = new_id[group] >= 0
    lab[move] = new_id[group[move]]
    return bool(move.any())


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """``labels`` without the ids that cover fewer than ``min_area`` pixels (a new array).

    Per image in the engine's loop; proofreading's ``filter_labels`` does the same for
    whole (lazy) volumes with an index and progress, more than one slice needs."""
    labels = np.asarray(labels)
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = (counts < min_area) & (ids != 0)
    if not small.any():
        return labels.copy()
    return np.where(small[inverse.reshape(labels.shape)], 0, labels).astype(
        labels.dtype, copy=False
    )


def split_fragments(labels: np.ndarray, label_divisor: int = 10000) -> np.ndarray:
    """Give every disconnected fragment of an instance its own id (a new array).

    The largest fragment keeps the original id; the others get new ids of the same class
    (``class_id * label_divisor + k`` with k above the class's current maximum), so new ids
    never collide with existing ones. Connectivity is face-only (4 in 2D, 6 in 3D).

    Cost: one connected-components pass over the image (components of equal ids), then work
    per fragment only; no pass per instance and no sort of the pixels.
    """
    labels = np.asarray(labels)
    comps, orig, order, keeps = _pieces(labels)
    if orig.size == 1:
        return labels.copy()
    # The first (largest) piece of each id keeps it; the others get new ids.
    sorted_orig = orig[order]
    new_label = np.zeros(orig.size, dtype=np.int64)
    new_label[order[keeps]] = sorted_orig[keeps]
    extra = order[~keeps]
    if extra.size:
        divisor = max(1, int(label_divisor))
        extra_cls = orig[extra] // divisor
        all_ids = sorted_orig[keeps]  # the distinct ids present, one per instance
        for c in np.unique(extra_cls):  # loop over classes (a handful), not instances
            members = extra[extra_cls == c]
            in_class = all_ids[all_ids // divisor == c]
            start = int(in_class.max() % divisor if c > 0 else in_class.max()) + 1
            new_label[members] = c * divisor + start + np.arange(members.size)
    out_dtype = np.result_type(labels.dtype, np.min_scalar_type(int(new_label.max())))
    return new_label[comps].astype(out_dtype, copy=False)
