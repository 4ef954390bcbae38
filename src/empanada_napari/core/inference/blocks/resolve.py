"""Phase 3 of a chunked run: whole objects from the links, size filters, final ids.

Runs on the client and touches small arrays only: every block's local ids are nodes of one
graph (offset by block), its links the edges; :func:`..objects.resolve_objects` (the rule the
stack's slice linking uses too) finds the objects, sums their sizes and boxes over the cores of
the blocks they cross, filters and numbers them.
"""

from __future__ import annotations

import numpy as np

from ...objects import resolve_objects
from .plan import Block
from .store import load_summary


def resolve_blocks(
    blocks: list[Block],
    counts: dict[tuple, int],
    links: list[tuple],
    work: str,
    min_size: int,
    min_extent: int,
    shape: tuple[int, ...] | None = None,
) -> tuple[dict[tuple, np.ndarray], int]:
    """Per-block lookup tables (local id -> final id) and the number of objects. With the
    volume's ``shape``, objects cut by its border are judged by what could be seen of them."""
    offsets, total = {}, 0
    for b in blocks:
        offsets[b.index] = total
        total += counts[b.index]
    rows = [offsets[a] + ia - 1 for a, _, ia, _ in links]
    cols = [offsets[b] + ib - 1 for _, b, _, ib in links]
    empty = np.zeros(0, np.int64)
    nodes, sizes, los, his = [empty], [empty], [empty.reshape(0, 3)], [empty.reshape(0, 3)]
    for b in blocks:
        n = counts[b.index]
        if n == 0:
            continue
        b_size, b_lo, b_hi = load_summary(work, b, "sizes", "lo", "hi")
        nodes.append(np.arange(offsets[b.index], offsets[b.index] + n))
        sizes.append(b_size[1:])
        los.append(b_lo[1:])
        his.append(b_hi[1:])
    final, n_objects = resolve_objects(
        total,
        (np.concatenate(rows) if rows else empty, np.concatenate(cols) if cols else empty),
        np.concatenate(nodes),
        np.concatenate(sizes),
        np.concatenate(los),
        np.concatenate(his),
        min_size,
        min_extent,
        shape,
    )
    luts = {}
    for b in blocks:
        n = counts[b.index]
        lut = np.zeros(n + 1, np.uint32)
        lut[1:] = final[offsets[b.index] : offsets[b.index] + n]
        luts[b.index] = lut
    return luts, n_objects
