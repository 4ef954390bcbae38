"""Phase 2 of a chunked run: objects of neighbouring blocks linked where their blocks overlap.

A block and each of its 26 neighbours both segmented the region where their padded blocks
intersect. Two objects are the same when their IoU *inside that region* is at least
``face_link_iou`` (0.5), or when one lies mostly (``face_link_ioa``, 0.5, of all its voxels in
its block) inside the other: a fragment one block split off at its edge. Overlap rather than
contact: touching mitochondria share a face, not voxels, so they stay apart. In stack mode
the two slices either side of a face along the stack axis are also linked with the stack's
own slice-to-slice rules.
"""

from __future__ import annotations

import numpy as np

from ...metrics import label_overlap
from ...settings import AXES
from ..stack import link_slices
from .plan import Block, Job, intersection, relative
from .store import load_summary, read_labels


def link_block(job: Job, block: Block, neighbours: list[Block]) -> list[tuple]:
    """(neighbour index, ids here, ids there) of objects linked across faces."""
    sizes = load_summary(job.work, block, "psizes")
    links = []
    for other in neighbours:
        region = intersection(block.padded, other.padded)
        if region is None:
            continue
        here = read_labels(job.work, block, relative(region, block.padded))
        there = read_labels(job.work, other, relative(region, other.padded))
        ov = label_overlap(here, there)
        # The ioa rule joins a fragment that one block split off near its edge; measuring it
        # on the whole object, not on its part in the shared region, keeps an object that
        # pokes a few voxels into its neighbour's territory from merging with that neighbour.
        other_sizes = load_summary(job.work, other, "psizes")
        ia_all, ib_all = ov.pred_ids[ov.pair_pred], ov.gt_ids[ov.pair_gt]
        smaller = np.minimum(sizes[ia_all], other_sizes[ib_all])
        keep = (ov.pair_ious() >= job.blocks.face_link_iou) | (
            ov.pair_inter >= job.blocks.face_link_ioa * smaller
        )
        ia, ib = ov.pred_ids[ov.pair_pred[keep]], ov.gt_ids[ov.pair_gt[keep]]
        face = _stack_face(job, block, other)
        if face is not None:
            # Across a face along the stack axis, the slice pair either side of it is also
            # linked by the stack's own slice-to-slice rules, as in a whole-volume run: a
            # block starts its linking afresh, so near its first slices its objects are
            # still pieces that the block before it had already joined.
            fa, fb = _face_links(block, other, face, job)
            ia, ib = np.concatenate([ia, fa]), np.concatenate([ib, fb])
        if ia.size:
            links.append((other.index, ia, ib))
    return links


def _stack_face(job: Job, block: Block, other: Block) -> int | None:
    """The stack axis when ``other`` is the next block along it in stack mode, else None."""
    if job.mode != "stack":
        return None
    k = AXES[job.stack.axis][0]
    step = tuple(o - i for i, o in zip(block.index, other.index, strict=True))
    return k if step == tuple(int(d == k) for d in range(3)) else None


def _face_links(block: Block, other: Block, k: int, job: Job):
    """(ids in block, ids in other) joined by :func:`link_slices` on the slices at the face."""
    last = block.core[k].stop - 1
    # Only the part of the face that the two blocks own: elsewhere their halos hold pieces
    # of objects cut by the block edges, which their own neighbours link.
    sa = list(block.core_in_padded)
    sb = list(other.core_in_padded)
    sa[k] = last - block.padded[k].start
    sb[k] = last + 1 - other.padded[k].start
    pair = np.stack([read_labels(job.work, block, tuple(sa)),
                     read_labels(job.work, other, tuple(sb))])  # fmt: skip
    linked = link_slices(
        pair, job.stack.slice_link_iou, job.stack.slice_link_ioa, job.stack.linking
    )
    # Each object lies whole inside one linked object: read its linked id at any voxel.
    ids_a, at_a = np.unique(pair[0], return_index=True)
    ids_b, at_b = np.unique(pair[1], return_index=True)
    to_a, to_b = linked[0].ravel()[at_a], linked[1].ravel()[at_b]
    ids_a, to_a = ids_a[ids_a > 0], to_a[ids_a > 0]
    ids_b, to_b = ids_b[ids_b > 0], to_b[ids_b > 0]
    # Every (a, b) pair that shares a linked id (several ids may share one).
    ia, ib = np.nonzero(to_a[:, None] == to_b[None, :])
    return ids_a[ia].astype(np.int64), ids_b[ib].astype(np.int64)
