"""Objects from a link graph: the one rule shared by slice linking and block stitching.

Both 3D drivers end the same way. Pieces of objects (2D objects of a slice in
:mod:`.stack`, objects of a block in :mod:`.blocks`) are nodes; links join nodes that are the
same object. Connected components of that graph are the objects; their sizes and bounding
boxes are summed from the pieces, ``min_size`` and ``min_extent`` apply to whole objects, and
the kept objects are numbered 1..K in order of their first node.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import EmpanadaError

_INT64 = np.iinfo(np.int64)


def resolve_objects(
    n_nodes: int,
    links: tuple[np.ndarray, np.ndarray],
    piece_node: np.ndarray,
    piece_size: np.ndarray,
    piece_lo: np.ndarray,
    piece_hi: np.ndarray,
    min_size: int = 0,
    min_extent: int = 0,
) -> tuple[np.ndarray, int]:
    """Final object id of every node (0: removed) and the number of objects.

    ``links`` are two arrays of node indices joined pairwise. Pieces (one node may have
    several, e.g. one per slice) carry a voxel count and a bounding box ``[lo, hi)`` (K, 3);
    a node's object sums the pieces of every node linked to it.
    """
    rows, cols = (np.asarray(a, dtype=np.int64) for a in links)
    graph = coo_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(n_nodes, n_nodes))
    n_comp, comp = connected_components(graph, directed=False)
    at = comp[np.asarray(piece_node, dtype=np.int64)]
    size = np.zeros(n_comp, np.int64)
    lo = np.full((n_comp, 3), _INT64.max, np.int64)
    hi = np.full((n_comp, 3), _INT64.min, np.int64)
    np.add.at(size, at, piece_size)
    np.minimum.at(lo, at, piece_lo)
    np.maximum.at(hi, at, piece_hi)
    keep = (size > 0) & (size >= min_size)
    if min_extent > 0:
        keep &= (hi - lo).min(axis=1) >= min_extent
    # Number the kept objects in order of their smallest node.
    root = np.full(n_comp, n_nodes, dtype=np.int64)
    np.minimum.at(root, comp, np.arange(n_nodes))
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(root[kept], kind="stable")]
    if kept.size > np.iinfo(np.uint32).max:
        raise EmpanadaError(f"{kept.size} objects do not fit uint32 labels.")
    final = np.zeros(n_comp, dtype=np.uint32)
    final[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    return final[comp], int(kept.size)
