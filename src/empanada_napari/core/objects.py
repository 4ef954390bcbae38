"""Objects from a link graph: the one rule shared by slice linking and block stitching.

Both 3D drivers end the same way. Pieces of objects (2D objects of a slice in
:mod:`.stack`, objects of a block in :mod:`.blocks`) are nodes; links join nodes that are the
same object. Connected components of that graph are the objects; their sizes and bounding
boxes are summed from the pieces, ``min_size`` and ``min_extent`` apply to whole objects, and
the kept objects are numbered 1..K in order of their first node.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import EmpanadaError

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
    shape: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, int]:
    """Final object id of every node (0: removed) and the number of objects.

    ``links`` are two arrays of node indices joined pairwise. Pieces (one node may have
    several, e.g. one per slice) carry a voxel count and a bounding box ``[lo, hi)`` (K, 3);
    a node's object sums the pieces of every node linked to it. With the volume's ``shape``,
    objects cut by its border are judged by what could be seen of them (:func:`keep_objects`).
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
    keep = keep_objects(size, lo, hi, min_size, min_extent, shape)
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


def sizes_and_boxes(
    labels: np.ndarray, n: int, size: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel count (n,) and bounding box ``[lo, hi)`` (n, ndim) of ids 1..n of ``labels``
    (non-negative integers); an absent id has size 0 and an empty box at the origin. Pass
    ``size`` when the counts are known already (one pass over the volume fewer)."""
    if size is None:
        size = np.bincount(labels.reshape(-1), minlength=n + 1)[1 : n + 1]
    lo = np.zeros((n, labels.ndim), np.int64)
    hi = np.zeros((n, labels.ndim), np.int64)
    for k, box in enumerate(ndi.find_objects(labels, max_label=n)):
        if box is not None:
            lo[k], hi[k] = [b.start for b in box], [b.stop for b in box]
    return size, lo, hi


def touches_border(lo: np.ndarray, hi: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(n, d) bool: whether each box ``[lo, hi)`` reaches the volume's border along each axis
    (the volume cut the object there)."""
    return (lo <= 0) | (hi >= np.asarray(shape, dtype=np.int64))


def keep_objects(
    size: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    min_size: int = 0,
    min_extent: int = 0,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Which objects pass the size filters, from their voxel counts ``size`` (n,) and
    bounding boxes ``[lo, hi)`` (n, d).

    An object needs ``min_size`` voxels and every box side >= ``min_extent``. Given the
    volume's ``shape`` (border-aware filtering), an object whose box touches the volume border
    along an axis was cut there, so only what could be seen of it is judged: ``min_extent``
    does not apply along that axis, and ``min_size`` is scaled by the fraction of
    ``min_extent`` it shows there, ``min(1, side / min_extent)`` per cut axis (an object seen
    in 2 of the 8 slices a minimal object spans needs a quarter of ``min_size``). Without
    ``min_extent`` there is no reference length and ``min_size`` applies unchanged.
    """
    side = hi - lo
    keep = size > 0
    if shape is None:
        keep &= size >= min_size
        return keep & (side.min(axis=1) >= min_extent) if min_extent > 0 else keep
    cut = touches_border(lo, hi, shape)
    seen = np.ones(size.shape)
    if min_extent > 0:
        keep &= ((side >= min_extent) | cut).all(axis=1)
        seen = np.where(cut, np.minimum(1.0, side / min_extent), 1.0).prod(axis=1)
    return keep & (size >= min_size * seen)
