"""Ortho-plane consensus (docs/design.md s.3): stack inference along xy, xz and yz, then voting.

1. Objects of the three stack results are linked across views when their IoU is at least
   ``view_link_iou`` (0.1); connected groups of linked objects are *clusters*.
2. A cluster seen in fewer than 2 views is dropped (kept with ``allow_one_view``).
3. A voxel belongs to a cluster when at least ``pixel_vote_thr`` (2) views put it in one of
   the cluster's objects (1 for a one-view cluster kept with ``allow_one_view``).
4. A cluster whose links are weak (mean IoU below ``cluster_iou_thr``, 0.75) while one view
   split it into several objects (touching mitochondria merged by another view) is split
   along that view's objects; voxels that view did not cover go to its nearest object.
5. ``min_size`` / ``min_extent`` filters (border-aware: objects cut by the volume border are
   judged by what could be seen of them), ids relabelled 1..K.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import InputError
from ..jobs import CancelFlag, Progress, part_progress
from ..memory import reuse_freed_memory, zeros
from ..metrics import label_overlap
from ..preprocess import intensity_range
from ..settings import OrthoSettings, StackSettings, resolve
from .engine import Engine2D
from .stack import filter_labelled, segment_stack_3d

VIEWS = ("xy", "xz", "yz")


def _pair_ious(a: np.ndarray, b: np.ndarray):
    """(id_a, id_b, IoU) of every overlapping pair of objects of two label volumes."""
    ov = label_overlap(a, b)
    return ov.pred_ids[ov.pair_pred], ov.gt_ids[ov.pair_gt], ov.pair_ious()


def ortho_consensus(
    views: list[np.ndarray],
    settings: OrthoSettings | None = None,
    *,
    min_size: int = 0,
    min_extent: int = 0,
    border_aware: bool = False,
    **params,
) -> np.ndarray:
    """Merge three (or more) 3D label volumes of the same shape into one; uint32 1..K.

    ``params`` are :class:`~..settings.OrthoSettings` fields by name. The votes are counted
    only on voxels that some view labels (a few % of a volume), so time and memory beyond the
    views themselves stay small on whole volumes.
    """
    settings = resolve(params, ortho=settings)["ortho"]
    pixel_vote_thr, cluster_iou_thr = settings.pixel_vote_thr, settings.cluster_iou_thr
    allow_one_view, link_iou = settings.allow_one_view, settings.view_link_iou
    if len(views) < 2:
        raise InputError("Ortho-plane consensus needs at least two views.")
    shape = views[0].shape
    if any(v.shape != shape for v in views):
        raise InputError(f"Views differ in shape: {[v.shape for v in views]}")
    if not 1 <= pixel_vote_thr <= len(views):
        raise InputError(f"pixel_vote_thr must be 1..{len(views)}, got {pixel_vote_thr}")
    views = [np.asarray(v) for v in views]
    views = [v if v.dtype.kind in "ui" else v.astype(np.int64) for v in views]
    # Global node index for (view, id): offsets by view.
    maxima = [int(v.max()) for v in views]
    offsets = np.concatenate([[0], np.cumsum([m + 1 for m in maxima])])
    n_nodes = int(offsets[-1])
    rows, cols, weights = [], [], []
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            ia, ib, iou = _pair_ious(views[i], views[j])
            keep = iou >= link_iou
            rows.append(ia[keep] + offsets[i])
            cols.append(ib[keep] + offsets[j])
            weights.append(iou[keep])
    r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((np.ones_like(w), (r, c)), shape=(n_nodes, n_nodes))
    _, cluster = connected_components(graph, directed=False)
    cluster = cluster.astype(np.int64) + 1  # 0 is reserved for background
    # Which views each cluster has objects in, and how strongly its links agree.
    node_view = np.repeat(np.arange(len(views)), [m + 1 for m in maxima])
    present = np.zeros((cluster.max() + 1, len(views)), dtype=bool)
    real = np.concatenate([np.arange(1, m + 1) + offsets[k] for k, m in enumerate(maxima)])
    present[cluster[real], node_view[real]] = True
    n_views = present.sum(axis=1)
    # (bincount of an empty array returns int64 even with float weights: cast explicitly)
    link_sum = np.bincount(cluster[r], weights=w, minlength=cluster.max() + 1).astype(float)
    link_n = np.bincount(cluster[r], minlength=cluster.max() + 1)
    mean_iou = np.divide(link_sum, link_n, out=np.ones_like(link_sum), where=link_n > 0)
    # Cluster id of each view's objects (0 = background), as lookup tables; small types
    # because the votes below touch every labelled voxel.
    id_type = np.int32 if int(cluster.max()) + n_nodes < 2**31 else np.int64
    vote_type = np.min_scalar_type(len(views) + 1)
    luts = []
    for k, m in enumerate(maxima):
        lut = cluster[offsets[k] : offsets[k] + m + 1].astype(id_type)
        lut[0] = 0
        luts.append(lut)
    # Votes on the voxels some view labels; everything else is background in the result.
    fg = views[0] > 0
    for v in views[1:]:
        fg |= v > 0
    cl = [lut[v[fg]] for lut, v in zip(luts, views, strict=True)]
    best = zeros(cl[0].shape, id_type)
    best_votes = zeros(cl[0].shape, vote_type)
    for k in range(len(views)):
        votes = zeros(cl[0].shape, vote_type)
        for m in range(len(views)):
            votes += cl[m] == cl[k]
        votes[cl[k] == 0] = 0
        better = votes > best_votes
        best[better] = cl[k][better]
        best_votes[better] = votes[better]
    one_view = 1 if allow_one_view else len(views) + 1
    thr = np.where(n_views == 1, one_view, pixel_vote_thr).astype(vote_type)  # per cluster
    kept = np.where((best > 0) & (best_votes >= thr[best]), best, 0)
    out = zeros(shape, np.uint32 if id_type == np.int32 else np.int64)
    out[fg] = kept
    _split_weak_clusters(out, views, luts, fg, kept, cluster, mean_iou, cluster_iou_thr)
    # Splitting relabels only voxels of fg, so every label is in fg.
    return filter_labelled(out, fg, min_size, min_extent, border_aware)


def _split_weak_clusters(out, views, luts, fg, kept, cluster, mean_iou, cluster_iou_thr):
    """Split weakly linked clusters along the view that separates them most, in place.

    ``kept`` holds the cluster ids of the voxels selected by ``fg`` (0 = dropped). New ids
    start above every cluster id, so a voxel relabelled here never matches a later cluster.
    """
    ids = np.unique(kept[kept > 0])
    weak = ids[mean_iou[ids] < cluster_iou_thr]
    if weak.size == 0:
        return
    next_id = int(cluster.max()) + 1
    # Bounding boxes of the weak clusters, from the coordinates of their voxels.
    in_weak = np.isin(kept, weak)
    coords = np.unravel_index(np.flatnonzero(fg)[in_weak], out.shape)
    which = np.searchsorted(weak, kept[in_weak])
    lo = [np.full(weak.size, np.iinfo(np.int64).max) for _ in out.shape]
    hi = [np.full(weak.size, -1) for _ in out.shape]
    for axis, coord in enumerate(coords):
        np.minimum.at(lo[axis], which, coord)
        np.maximum.at(hi[axis], which, coord)
    for j, cid in enumerate(weak):  # only weak clusters (few), each inside its bounding box
        box = tuple(slice(int(lo[a][j]), int(hi[a][j]) + 1) for a in range(out.ndim))
        member = out[box] == cid
        in_cluster = [(lut[v[box]] == cid) & member for lut, v in zip(luts, views, strict=True)]
        # The view with the most objects in this cluster.
        counts = [len(np.unique(v[box][m])) for v, m in zip(views, in_cluster, strict=True)]
        k = int(np.argmax(counts))
        if counts[k] < 2:
            continue
        seeds = np.where(in_cluster[k], views[k][box], 0)
        if not seeds.any():
            continue
        _, idx = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[tuple(idx)]
        uniq, inverse = np.unique(nearest[member], return_inverse=True)
        new_ids = np.arange(next_id, next_id + len(uniq))
        next_id += len(uniq)
        region = out[box]
        region[member] = new_ids[inverse]


@reuse_freed_memory()
def segment_ortho(
    volume,
    engine: Engine2D,
    settings: StackSettings | None = None,
    ortho: OrthoSettings | None = None,
    *,
    value_range: tuple[float, float] | None = None,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    **params,
) -> np.ndarray:
    """3D segmentation by stack inference along xy, xz and yz plus consensus (uint32 1..K).

    ``params`` are :class:`~..settings.StackSettings` (``axis`` is ignored) and
    :class:`~..settings.OrthoSettings` fields; ``progress`` counts slices over the three views.
    """
    resolved = resolve(params, stack=settings, ortho=ortho)
    settings, ortho = resolved["stack"], resolved["ortho"]
    if value_range is None:
        value_range = intensity_range(volume)
    shape = volume.shape
    total = shape[0] + shape[1] + shape[2]
    done = 0
    results = []
    for axis, n in zip(VIEWS, (shape[0], shape[1], shape[2]), strict=True):
        # Per-view results are not size-filtered: the consensus filters once at the end.
        results.append(
            segment_stack_3d(
                volume,
                engine,
                replace(settings, axis=axis, min_size=0, min_extent=0),
                value_range=value_range,
                progress=part_progress(progress, done, total),
                cancel=cancel,
            )
        )
        done += n
    return ortho_consensus(
        results,
        ortho,
        min_size=settings.min_size,
        min_extent=settings.min_extent,
        border_aware=settings.border_aware,
    )
