"""Ortho-plane consensus (docs/design.md s.3): stack inference along xy, xz and yz, then voting.

1. Objects of the three stack results are linked across views when their IoU is at least
   ``view_link_iou`` (0.1); connected groups of linked objects are *clusters*.
2. A cluster seen in fewer than 2 views is dropped (kept with ``allow_one_view``).
3. A voxel belongs to a cluster when at least ``pixel_vote_thr`` (2) views put it in one of
   the cluster's objects (1 for a one-view cluster kept with ``allow_one_view``).
4. A cluster whose links are weak (mean IoU below ``cluster_iou_thr``, 0.75) while one view
   split it into several objects (touching mitochondria merged by another view) is split
   along that view's objects; voxels that view did not cover go to its nearest object.
5. ``min_size`` / ``min_extent`` filters, ids relabelled 1..K.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import InputError
from ..jobs import CancelFlag, Progress, part_progress
from ..metrics import label_overlap
from ..preprocess import intensity_range
from ..settings import OrthoSettings, StackSettings, resolve
from .engine import Engine2D
from .stack import filter_objects, segment_stack_3d

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
    **params,
) -> np.ndarray:
    """Merge three (or more) 3D label volumes of the same shape into one; uint32 1..K.

    ``params`` are :class:`~..settings.OrthoSettings` fields by name.
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
    views = [np.asarray(v).astype(np.int64) for v in views]
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
    cluster = cluster + 1  # 0 is reserved for background
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
    # Per-voxel cluster ids in each view (0 = background), then votes for each candidate.
    cl = [cluster[v + offsets[k]] * (v > 0) for k, v in enumerate(views)]
    best = np.zeros(shape, dtype=np.int64)
    best_votes = np.zeros(shape, dtype=np.int64)
    for k in range(len(views)):
        votes = sum((cl[m] == cl[k]) for m in range(len(views))) * (cl[k] > 0)
        better = votes > best_votes
        best[better] = cl[k][better]
        best_votes[better] = votes[better]
    thr = np.where(n_views[best] == 1, 1 if allow_one_view else len(views) + 1, pixel_vote_thr)
    keep = (best > 0) & (best_votes >= thr)
    out = np.where(keep, best, 0)
    out = _split_weak_clusters(out, views, cl, cluster, offsets, mean_iou, cluster_iou_thr)
    return filter_objects(out, min_size, min_extent)


def _split_weak_clusters(out, views, cl, cluster, offsets, mean_iou, cluster_iou_thr):
    """Split weakly linked clusters along the view that separates them most."""
    ids = np.unique(out[out > 0])
    weak = ids[mean_iou[ids] < cluster_iou_thr]
    if weak.size == 0:
        return out
    result = out.copy()
    next_id = int(cluster.max()) + 1
    boxes = ndi.find_objects(np.where(np.isin(out, weak), out, 0))
    for cid in weak:  # only weak clusters (few), each inside its bounding box
        box = boxes[cid - 1]
        if box is None:
            continue
        member = out[box] == cid
        # The view with the most objects in this cluster.
        counts = [len(np.unique(v[box][(cl[k][box] == cid) & member])) for k, v in enumerate(views)]
        k = int(np.argmax(counts))
        if counts[k] < 2:
            continue
        seeds = np.where(member & (cl[k][box] == cid), views[k][box], 0)
        if not seeds.any():
            continue
        _, idx = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        nearest = seeds[tuple(idx)]
        uniq, inverse = np.unique(nearest[member], return_inverse=True)
        new_ids = np.arange(next_id, next_id + len(uniq))
        next_id += len(uniq)
        region = result[box]
        region[member] = new_ids[inverse]
    return result


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
        results, ortho, min_size=settings.min_size, min_extent=settings.min_extent
    )
