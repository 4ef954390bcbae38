"""Proofreading of instance labels: merge, split, delete, morph, filter, measure.

Everything here works on the bounding box of the labels concerned, found in a
:class:`LabelIndex` (per-label bounding boxes and voxel counts, built once with a chunked pass
and updated incrementally from the edited box only), so an edit on a 512 x 1024 x 1024 volume
costs what the object costs, not what the volume costs. ``labels`` may be a numpy array or any
array-like that supports basic slicing (zarr, dask): only boxes are ever read.

Editing functions never mutate their inputs: they return an :class:`Edit` (the box, the old and
the new values in it). :meth:`Edit.apply` and :meth:`Edit.revert` are the explicit in-place
writes of that box, and :meth:`LabelIndex.update` brings the index up to date afterwards.

``fixed`` arguments restrict an edit to a plane (or a time point): a mapping ``{axis: index}``
of axes held at one index, e.g. ``{0: z}`` for the current plane of a z, y, x volume, or
``{0: t}`` for one time point of a t, z, y, x stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from empanada_napari.core.errors import InputError

Box = tuple[slice, ...]

MORPH_OPERATIONS = ("dilate", "erode", "open", "close", "fill holes")

#: Voxels read per block when a whole volume must be scanned (64 Mi voxels, 256 MB of uint32).
BLOCK_VOXELS = 1 << 26


# --------------------------------------------------------------------------- helpers
def _objects(region: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ids, bbox starts, bbox stops and voxel counts of the non-zero labels in ``region``."""
    ndim = region.ndim
    empty = (
        np.zeros(0, np.int64),
        np.zeros((0, ndim), np.int64),
        np.zeros((0, ndim), np.int64),
        np.zeros(0, np.int64),
    )
    if region.size == 0:
        return empty
    if region.dtype.kind not in "iu":
        raise InputError(f"labels must be an integer array, got {region.dtype}")
    top = int(region.max())
    if top <= 0:
        return empty
    if top <= max(1 << 20, region.size):
        # find_objects allocates one entry per id up to the maximum: cheap for compact ids.
        lab = region.astype(np.int64) if region.dtype == np.uint64 else region
        counts = np.bincount(lab.ravel(), minlength=top + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        slices = ndi.find_objects(lab)
        counts = counts[ids]
    else:
        # Sparse huge ids (class * divisor + k): relabel to 1..n first.
        uniq, inverse = np.unique(region, return_inverse=True)
        inverse = inverse.reshape(region.shape)
        if uniq[0] == 0:
            uniq = uniq[1:]
        else:  # no background in the region: shift so that 0 stays background
            inverse = inverse + 1
        counts = np.bincount(inverse.ravel())[1:]
        ids = uniq.astype(np.int64)
        slices = ndi.find_objects(inverse)
        return (
            ids,
            np.array([[s.start for s in sl] for sl in slices], np.int64).reshape(-1, ndim),
            np.array([[s.stop for s in sl] for sl in slices], np.int64).reshape(-1, ndim),
            counts.astype(np.int64),
        )
    lo = np.array([[s.start for s in slices[i - 1]] for i in ids], np.int64).reshape(-1, ndim)
    hi = np.array([[s.stop for s in slices[i - 1]] for i in ids], np.int64).reshape(-1, ndim)
    return ids.astype(np.int64), lo, hi, counts.astype(np.int64)


def _group(ids, lo, hi, counts):
    """Combine rows with the same id (bbox union, summed counts), sorted by id."""
    if len(ids) == 0:
        return ids, lo, hi, counts
    uniq, inverse = np.unique(ids, return_inverse=True)
    n, ndim = len(uniq), lo.shape[1]
    glo = np.full((n, ndim), np.iinfo(np.int64).max, np.int64)
    ghi = np.zeros((n, ndim), np.int64)
    gc = np.zeros(n, np.int64)
    np.minimum.at(glo, inverse, lo)
    np.maximum.at(ghi, inverse, hi)
    np.add.at(gc, inverse, counts)
    return uniq.astype(np.int64), glo, ghi, gc


def _blocks(shape: Sequence[int], block_voxels: int = BLOCK_VOXELS) -> list[Box]:
    """Slabs along axis 0 of about ``block_voxels`` voxels (the whole array when 0-d/1 slab)."""
    if len(shape) == 0:
        return [()]
    plane = int(np.prod(shape[1:])) or 1
    step = max(1, block_voxels // plane)
    rest = tuple(slice(0, s) for s in shape[1:])
    return [(slice(i, min(i + step, shape[0])),) + rest for i in range(0, shape[0], step)]


def _read(labels: Any, box: Box) -> np.ndarray:
    """A numpy copy of ``labels[box]`` (never a view: results must not alias the input)."""
    region = labels[box]
    if hasattr(region, "compute"):
        region = region.compute()
    return np.array(region, copy=True)


def _lazy(array: Any) -> Any:
    """numpy and dask arrays as they are; anything else (zarr) wrapped lazily in dask."""
    if isinstance(array, np.ndarray) or hasattr(array, "compute"):
        return array
    import dask.array as da

    return da.from_array(array, chunks=getattr(array, "chunks", "auto"))


def _full_box(shape: Sequence[int], fixed: Mapping[int, int] | None = None) -> Box:
    box = [slice(0, int(s)) for s in shape]
    for axis, index in (fixed or {}).items():
        box[axis] = slice(int(index), int(index) + 1)
    return tuple(box)


def _check_fixed(shape: Sequence[int], fixed: Mapping[int, int] | None) -> dict[int, int]:
    out = {}
    for axis, index in (fixed or {}).items():
        axis, index = int(axis), int(index)
        if not -len(shape) <= axis < len(shape):
            raise InputError(f"axis {axis} does not exist in labels of shape {tuple(shape)}")
        axis %= len(shape)
        if not 0 <= index < shape[axis]:
            raise InputError(f"index {index} is outside axis {axis} (size {shape[axis]})")
        out[axis] = index
    return out


def _box_volume(box: Box) -> int:
    return int(np.prod([s.stop - s.start for s in box]))


def _ball(ndim: int, radius: int) -> np.ndarray:
    """Euclidean ball footprint: offsets with squared length <= radius**2."""
    grid = np.mgrid[(slice(-radius, radius + 1),) * ndim]
    return (grid**2).sum(0) <= radius**2


def _as_ids(ids: Iterable[int] | int) -> np.ndarray:
    arr = np.unique(np.atleast_1d(np.asarray(ids, dtype=np.int64)))
    return arr


# --------------------------------------------------------------------------- index
@dataclass
class LabelIndex:
    """Per-label bounding boxes and voxel counts of a labels array.

    Rows are sorted by id; ``lo``/``hi`` are the inclusive start and exclusive stop of each
    label's bounding box in data coordinates. Build it once with :meth:`build` and keep it in
    step with :meth:`update` after each edit (only the edited box is read again).
    """

    shape: tuple[int, ...]
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        ndim = len(self.shape)
        if self.lo is None:
            self.lo = np.zeros((0, ndim), np.int64)
        if self.hi is None:
            self.hi = np.zeros((0, ndim), np.int64)

    @classmethod
    def build(cls, labels: Any, block_voxels: int = BLOCK_VOXELS) -> LabelIndex:
        """Index ``labels`` with one chunked pass (slabs of ``block_voxels`` along axis 0)."""
        shape = tuple(int(s) for s in labels.shape)
        parts = []
        for box in _blocks(shape, block_voxels):
            ids, lo, hi, counts = _objects(_read(labels, box))
            offset = np.array([s.start for s in box], np.int64)
            parts.append((ids, lo + offset, hi + offset, counts))
        if not parts:
            return cls(shape)
        cat = [np.concatenate([p[i] for p in parts]) for i in range(4)]
        ids, lo, hi, counts = _group(*cat)
        return cls(shape, ids, lo, hi, counts)

    # -- queries
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, label_id: object) -> bool:
        try:
            return self._row(int(label_id)) is not None  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def _row(self, label_id: int) -> int | None:
        i = int(np.searchsorted(self.ids, label_id))
        return i if i < len(self.ids) and self.ids[i] == label_id else None

    def _rows(self, ids: Iterable[int]) -> np.ndarray:
        ids = _as_ids(ids)
        rows = np.searchsorted(self.ids, ids)
        ok = (rows < len(self.ids)) & (self.ids[np.minimum(rows, len(self.ids) - 1)] == ids)
        if len(self.ids) == 0 or not ok.all():
            missing = ids[~ok] if len(self.ids) else ids
            raise InputError(f"label(s) {missing.tolist()} not found in the labels")
        return rows

    @property
    def max_id(self) -> int:
        """The largest id in use (0 when there is none)."""
        return int(self.ids[-1]) if len(self.ids) else 0

    def count(self, label_id: int) -> int:
        """Voxel count of one label (0 when absent)."""
        row = self._row(int(label_id))
        return 0 if row is None else int(self.counts[row])

    def bbox(self, label_id: int) -> Box:
        """Bounding box of one label as a tuple of slices (``InputError`` when absent)."""
        row = self._rows([label_id])[0]
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo[row], self.hi[row], strict=True))

    def union_box(
        self, ids: Iterable[int], fixed: Mapping[int, int] | None = None, pad: int = 0
    ) -> Box:
        """Union of the boxes of ``ids``, padded by ``pad`` (clipped), restricted to ``fixed``.

        Raises ``InputError`` when an id is absent or when none of them is in the fixed plane.
        """
        rows = self._rows(ids)
        lo = np.maximum(self.lo[rows].min(0) - pad, 0)
        hi = np.minimum(self.hi[rows].max(0) + pad, self.shape)
        box = [slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]
        for axis, index in _check_fixed(self.shape, fixed).items():
            inside = (self.lo[rows, axis] <= index) & (index < self.hi[rows, axis])
            if not inside.any():
                raise InputError(
                    f"label(s) {_as_ids(ids).tolist()} have no voxel at index {index}"
                    f" of axis {axis}"
                )
            box[axis] = slice(index, index + 1)
        return tuple(box)

    def intersecting(self, box: Box) -> np.ndarray:
        """Ids whose bounding box intersects ``box``."""
        lo = np.array([s.start for s in box])
        hi = np.array([s.stop for s in box])
        hit = np.all((self.lo < hi) & (self.hi > lo), axis=1)
        return self.ids[hit]

    def touching_border(self, axes: Sequence[int] | None = None) -> np.ndarray:
        """Ids whose bounding box touches the first or last index of any of ``axes``."""
        axes = list(range(len(self.shape))) if axes is None else list(axes)
        shape = np.array(self.shape)[axes]
        hit = np.any((self.lo[:, axes] == 0) | (self.hi[:, axes] == shape), axis=1)
        return self.ids[hit]

    def next_available(
        self, n: int = 1, class_id: int | None = None, label_divisor: int | None = None
    ) -> list[int]:
        """``n`` ids not in use; with ``label_divisor``, inside class ``class_id``'s id range.

        Ids are ``class_id * label_divisor + k`` (k >= 1) in the class scheme. The next ids after
        the largest one in use are preferred (so recently freed ids are not reused at once);
        gaps are used when the range is full.
        """
        if label_divisor:
            first = int(class_id or 0) * int(label_divisor) + 1
            stop = first - 1 + int(label_divisor)
        else:
            first, stop = 1, np.iinfo(np.int64).max
        lo_i, hi_i = np.searchsorted(self.ids, [first, stop])
        used = self.ids[lo_i:hi_i]
        start = int(used[-1]) + 1 if len(used) else first
        out = list(range(start, min(start + n, stop)))
        if len(out) < n:
            # Past the end of the range: reuse gaps below the largest id in use.
            free = np.setdiff1d(np.arange(first, start, dtype=np.int64), used)
            out += [int(v) for v in free[: n - len(out)]]
        if len(out) < n:
            raise InputError(f"no free label id left in [{first}, {stop})")
        return out

    # -- incremental update
    def _set_rows(self, ids, lo, hi, counts) -> None:
        """Replace the rows of ``ids`` (drop those with zero count), keep rows sorted."""
        ids = np.asarray(ids, np.int64)
        keep = ~np.isin(self.ids, ids)
        alive = np.asarray(counts) > 0
        self.ids = np.concatenate([self.ids[keep], ids[alive]])
        self.lo = np.concatenate(
            [self.lo[keep], np.asarray(lo, np.int64).reshape(-1, len(self.shape))[alive]]
        )
        self.hi = np.concatenate(
            [self.hi[keep], np.asarray(hi, np.int64).reshape(-1, len(self.shape))[alive]]
        )
        self.counts = np.concatenate([self.counts[keep], np.asarray(counts, np.int64)[alive]])
        order = np.argsort(self.ids, kind="stable")
        self.ids, self.lo, self.hi, self.counts = (
            self.ids[order],
            self.lo[order],
            self.hi[order],
            self.counts[order],
        )

    def update(
        self,
        labels: Any,
        box: Box,
        old: np.ndarray | None = None,
        new: np.ndarray | None = None,
    ) -> None:
        """Bring the index up to date after ``labels[box]`` changed (call after the write).

        With ``old`` and ``new`` (the box before and after, as an :class:`Edit` carries them)
        only labels that lost or gained voxels are touched and usually nothing is read;
        a label that lost voxels and extends beyond ``box`` has its own box re-read. Without
        them (e.g. after an undo), the box and the boxes of the labels around it are re-read.
        """
        box = tuple(slice(int(s.start), int(s.stop)) for s in box)
        offset = np.array([s.start for s in box], np.int64)
        if new is None:
            new = _read(labels, box)
        if old is None:
            self._update_generic(labels, box, new)
            return
        changed = old != new
        if not changed.any():
            return
        lost_ids, lost_n = np.unique(old[changed], return_counts=True)
        gain_ids, gain_n = np.unique(new[changed], return_counts=True)
        delta_ids = np.union1d(lost_ids, gain_ids)
        n_ids, n_lo, n_hi, _ = _objects(np.where(np.isin(new, delta_ids), new, 0))
        in_box = {
            int(i): (lo + offset, hi + offset) for i, lo, hi in zip(n_ids, n_lo, n_hi, strict=True)
        }
        delta: dict[int, int] = {}
        for i, c in zip(lost_ids, lost_n, strict=True):
            delta[int(i)] = delta.get(int(i), 0) - int(c)
        for i, c in zip(gain_ids, gain_n, strict=True):
            delta[int(i)] = delta.get(int(i), 0) + int(c)
        lost = {int(i) for i in lost_ids}
        box_lo = offset
        box_hi = np.array([s.stop for s in box], np.int64)
        rows_ids, rows_lo, rows_hi, rows_n = [], [], [], []
        rescan = []
        for label, d in delta.items():
            if label == 0:
                continue
            row = self._row(label)
            count = (int(self.counts[row]) if row is not None else 0) + d
            if count <= 0:
                rows_ids.append(label)
                rows_lo.append(box_lo)
                rows_hi.append(box_lo)
                rows_n.append(0)
                continue
            old_lo = self.lo[row] if row is not None else None
            old_hi = self.hi[row] if row is not None else None
            inside = row is None or (np.all(old_lo >= box_lo) and np.all(old_hi <= box_hi))
            if label in lost and not inside:
                rescan.append((label, count))
                continue
            if inside:
                # All of the label's voxels are in the box: its new box is the box content's.
                lo, hi = self._box_of(label, new, offset, in_box)
            else:
                # Only gained voxels: the old box grows by the part inside the edited box.
                lo, hi = in_box.get(label, (old_lo, old_hi))
                lo, hi = np.minimum(lo, old_lo), np.maximum(hi, old_hi)
            rows_ids.append(label)
            rows_lo.append(lo)
            rows_hi.append(hi)
            rows_n.append(count)
        for label, count in rescan:
            region_box = tuple(
                slice(int(min(a, s.start)), int(max(b, s.stop)))
                for a, b, s in zip(
                    self.lo[self._row(label)], self.hi[self._row(label)], box, strict=True
                )
            )
            region = _read(labels, region_box)
            coords = np.nonzero(region == label)
            r_off = np.array([s.start for s in region_box], np.int64)
            rows_ids.append(label)
            rows_lo.append(np.array([c.min() for c in coords]) + r_off)
            rows_hi.append(np.array([c.max() + 1 for c in coords]) + r_off)
            rows_n.append(count)
        if rows_ids:
            self._set_rows(rows_ids, rows_lo, rows_hi, rows_n)

    @staticmethod
    def _box_of(label, new, offset, in_box):
        if label in in_box:
            return in_box[label]
        coords = np.nonzero(new == label)
        return (
            np.array([c.min() for c in coords]) + offset,
            np.array([c.max() + 1 for c in coords]) + offset,
        )

    def _update_generic(self, labels: Any, box: Box, new: np.ndarray) -> None:
        present = np.unique(new)
        present = present[present != 0]
        known = np.union1d(present[np.isin(present, self.ids)], self.intersecting(box))
        affected = np.union1d(present, known).astype(np.int64)
        if len(affected) == 0:
            return
        region_box = box
        if len(known):
            # Every voxel of a known affected label lies in its old box or in the edited box.
            rows = self._rows(known)
            region_box = tuple(
                slice(int(min(s.start, a)), int(max(s.stop, b)))
                for s, a, b in zip(box, self.lo[rows].min(0), self.hi[rows].max(0), strict=True)
            )
        region = new if region_box == box else _read(labels, region_box)
        ids, lo, hi, counts = _objects(np.where(np.isin(region, affected), region, 0))
        r_off = np.array([s.start for s in region_box], np.int64)
        gone = np.setdiff1d(affected, ids)
        self._set_rows(
            np.concatenate([ids, gone]),
            np.concatenate([lo + r_off, np.zeros((len(gone), len(self.shape)), np.int64)]),
            np.concatenate([hi + r_off, np.zeros((len(gone), len(self.shape)), np.int64)]),
            np.concatenate([counts, np.zeros(len(gone), np.int64)]),
        )

    def copy(self) -> LabelIndex:
        """An independent copy."""
        return LabelIndex(
            self.shape, self.ids.copy(), self.lo.copy(), self.hi.copy(), self.counts.copy()
        )

    def equals(self, other: LabelIndex) -> bool:
        """Same ids, boxes and counts."""
        return (
            self.shape == other.shape
            and np.array_equal(self.ids, other.ids)
            and np.array_equal(self.lo, other.lo)
            and np.array_equal(self.hi, other.hi)
            and np.array_equal(self.counts, other.counts)
        )


# --------------------------------------------------------------------------- edits
@dataclass
class Edit:
    """One change of a labels array: ``labels[box]`` goes from ``old`` to ``new``.

    ``box`` is trimmed to the voxels that change. ``new_ids`` lists ids the edit created
    (split), ``removed_ids`` ids it made disappear from the box, ``target`` the id voxels were
    merged into.
    """

    box: Box
    old: np.ndarray
    new: np.ndarray
    new_ids: list[int] = field(default_factory=list)
    removed_ids: list[int] = field(default_factory=list)
    target: int | None = None

    @property
    def n_changed(self) -> int:
        """Number of voxels whose value changes."""
        return int(np.count_nonzero(self.old != self.new))

    def apply(self, labels: Any) -> None:
        """Write ``new`` into ``labels[box]`` (in place, only the box)."""
        labels[self.box] = self.new

    def revert(self, labels: Any) -> None:
        """Write ``old`` back into ``labels[box]`` (in place, only the box)."""
        labels[self.box] = self.old


def _make_edit(box: Box, old: np.ndarray, new: np.ndarray, **info: Any) -> Edit:
    """An :class:`Edit` trimmed to the bounding box of the changed voxels."""
    changed = old != new
    if not changed.any():
        return Edit(tuple(slice(s.start, s.start) for s in box), old[:0], new[:0], **info)
    sub = []
    for axis in range(old.ndim):
        other = tuple(a for a in range(old.ndim) if a != axis)
        hit = np.flatnonzero(changed.any(axis=other))
        sub.append(slice(int(hit[0]), int(hit[-1]) + 1))
    sub = tuple(sub)
    trimmed = tuple(
        slice(s.start + t.start, s.start + t.stop) for s, t in zip(box, sub, strict=True)
    )
    return Edit(trimmed, old[sub].copy(), new[sub].copy(), **info)


def apply_edit(labels: Any, edit: Edit, index: LabelIndex | None = None) -> None:
    """Write ``edit`` into ``labels`` in place and update ``index`` from the edited box."""
    if edit.old.size == 0:
        return
    edit.apply(labels)
    if index is not None:
        index.update(labels, edit.box, old=edit.old, new=edit.new)


def _picked(index: LabelIndex, ids: Iterable[int] | int, what: str) -> np.ndarray:
    ids = _as_ids(ids)
    if len(ids) == 0:
        raise InputError(f"no label picked to {what}")
    if (ids == 0).any():
        raise InputError(f"a pick is on the background (label 0): nothing to {what} there")
    index._rows(ids)  # raises InputError for unknown ids
    return ids


def merge_labels(
    labels: Any,
    ids: Iterable[int],
    *,
    index: LabelIndex,
    target: int | None = None,
    fixed: Mapping[int, int] | None = None,
) -> Edit:
    """Merge ``ids`` into one label: ``target`` if it is one of them, else the smallest id.

    Only the union of their bounding boxes (restricted to ``fixed``) is read.
    """
    ids = _picked(index, ids, "merge")
    if len(ids) < 2:
        raise InputError("pick at least two different labels to merge")
    target = int(target) if target is not None and int(target) in ids else int(ids.min())
    box = index.union_box(ids, fixed)
    old = _read(labels, box)
    new = np.where(np.isin(old, ids), old.dtype.type(target), old)
    removed = [int(i) for i in ids if i != target]
    return _make_edit(box, old, new, removed_ids=removed, target=target)


def delete_labels(
    labels: Any,
    ids: Iterable[int],
    *,
    index: LabelIndex,
    fixed: Mapping[int, int] | None = None,
) -> Edit:
    """Set the voxels of ``ids`` to 0 (in their boxes, restricted to ``fixed``)."""
    ids = _picked(index, ids, "delete")
    box = index.union_box(ids, fixed)
    old = _read(labels, box)
    new = np.where(np.isin(old, ids), old.dtype.type(0), old)
    return _make_edit(box, old, new, removed_ids=[int(i) for i in ids])


def _squeeze_axes(fixed: Mapping[int, int]) -> tuple[int, ...]:
    return tuple(sorted(fixed))


def split_label(
    labels: Any,
    label_id: int,
    *,
    index: LabelIndex,
    min_distance: int = 10,
    markers: Sequence[Sequence[float]] | np.ndarray | None = None,
    fixed: Mapping[int, int] | None = None,
    label_divisor: int | None = None,
) -> Edit:
    """Split one label by a watershed of its distance transform.

    Seeds are the distance-transform maxima at least ``min_distance`` voxels apart, or the
    user's ``markers`` (data coordinates, one per piece, all inside the label). The largest
    piece keeps ``label_id``; the others get ids not used anywhere in the labels (inside the
    label's class range when ``label_divisor`` is given).
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    label_id = int(_picked(index, [label_id], "split")[0])
    fixed = _check_fixed(index.shape, fixed)
    # One voxel of margin so the distance transform sees the background around the label.
    box = index.union_box([label_id], fixed, pad=1)
    old = _read(labels, box)
    axes = _squeeze_axes(fixed)
    region = old.squeeze(axis=axes) if axes else old
    mask = region == label_id
    if not mask.any():
        raise InputError(f"label {label_id} has no voxel in this plane")
    seeds = np.zeros(region.shape, np.int32)
    if markers is not None and len(markers):
        free = [a for a in range(len(index.shape)) if a not in fixed]
        origin = np.array([box[a].start for a in free])
        pts = np.round(np.asarray(markers, float)[:, free]).astype(np.int64) - origin
        for k, p in enumerate(pts, start=1):
            if np.any(p < 0) or np.any(p >= region.shape) or not mask[tuple(p)]:
                raise InputError(f"split marker {k} is not on label {label_id}")
            seeds[tuple(p)] = k
        if len(np.unique(seeds[seeds > 0])) < 2 or len({tuple(p) for p in pts}) < 2:
            raise InputError("place at least two markers on different voxels of the label")
        dist = ndi.distance_transform_edt(mask)
    else:
        dist = ndi.distance_transform_edt(mask)
        peaks = peak_local_max(
            dist, min_distance=max(1, int(min_distance)), labels=mask, exclude_border=False
        )
        if len(peaks) < 2:
            raise InputError(
                f"label {label_id} has a single distance maximum at min distance {min_distance}:"
                " lower the min distance or place markers"
            )
        seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    pieces = watershed(-dist, seeds, mask=mask)
    sizes = np.bincount(pieces.ravel())
    order = [int(k) for k in np.argsort(-sizes[1:], kind="stable") + 1 if sizes[k] > 0]
    class_id = label_id // label_divisor if label_divisor else None
    fresh = index.next_available(len(order) - 1, class_id=class_id, label_divisor=label_divisor)
    if fresh and fresh[-1] > np.iinfo(old.dtype).max:
        raise InputError(f"new label id {fresh[-1]} does not fit in {old.dtype}")
    lut = np.zeros(len(sizes), np.int64)
    lut[order[0]] = label_id
    lut[order[1:]] = fresh
    new_region = np.where(mask, lut[pieces], region).astype(old.dtype)
    new = new_region.reshape(old.shape)
    return _make_edit(box, old, new, new_ids=fresh, target=label_id)


def _erode_keep(region: np.ndarray, radius: int) -> np.ndarray:
    """Voxels whose whole ball of ``radius`` holds one (non-zero) label: the per-label erosion.

    The image border does not erode (values are replicated beyond it).
    """
    footprint = _ball(region.ndim, radius)
    high = ndi.maximum_filter(region, footprint=footprint, mode="nearest")
    low = ndi.minimum_filter(region, footprint=footprint, mode="nearest")
    return (high == low) & (region != 0)


def _fill_holes(region: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """Background cavities enclosed by exactly one picked label, filled with that label."""
    comp, n = ndi.label(region == 0)
    if n == 0:
        return region
    border = np.zeros(n + 1, bool)
    for axis in range(region.ndim):
        for end in (0, -1):
            border[np.take(comp, end, axis=axis)] = True
    pairs = []
    for axis in range(region.ndim):
        a = [slice(None)] * region.ndim
        b = [slice(None)] * region.ndim
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        for c_sl, l_sl in ((a, b), (b, a)):
            c, lab = comp[tuple(c_sl)], region[tuple(l_sl)]
            hit = (c > 0) & (lab != 0)
            pairs.append(np.stack([c[hit].astype(np.int64), lab[hit].astype(np.int64)], 1))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    n_neigh = np.bincount(pairs[:, 0], minlength=n + 1)
    fill = np.zeros(n + 1, np.int64)
    single = pairs[n_neigh[pairs[:, 0]] == 1]
    fill[single[:, 0]] = single[:, 1]
    fill[border] = 0
    fill[~np.isin(fill, picked)] = 0
    return np.where(comp > 0, fill[comp], region).astype(region.dtype)


def morph_labels(
    labels: Any,
    operation: str,
    radius: int = 1,
    *,
    index: LabelIndex,
    ids: Iterable[int] | None = None,
    fixed: Mapping[int, int] | None = None,
) -> Edit:
    """Dilate, erode, open, close or fill holes of ``ids`` (all labels when None).

    Per-label operations with a Euclidean ball of ``radius`` voxels (a disk in a plane): no
    label grows into another (dilation and closing only fill background; where two grown
    labels meet the nearest wins), erosion and opening only remove voxels of the picked labels.
    ``fill holes`` fills background cavities enclosed by one label (a pocket open to the image
    border is not a hole). The image border does not erode.
    """
    if operation not in MORPH_OPERATIONS:
        raise InputError(f"unknown operation {operation!r}; use one of {MORPH_OPERATIONS}")
    from skimage.segmentation import expand_labels

    radius = int(radius)
    if radius < 1 and operation != "fill holes":
        raise InputError("radius must be at least 1")
    fixed = _check_fixed(index.shape, fixed)
    pad = 2 * radius if operation == "close" else radius
    pad = 1 if operation == "fill holes" else pad
    if ids is None:
        if len(index) == 0:
            raise InputError("the labels are empty: nothing to morph")
        picked = index.ids
        box = _full_box(index.shape, fixed)
    else:
        picked = _picked(index, ids, operation)
        box = index.union_box(picked, fixed, pad=pad)  # the plane stays one plane thick
    old = _read(labels, box)
    axes = _squeeze_axes(fixed)
    region = old.squeeze(axis=axes) if axes else old
    is_picked = np.isin(region, picked)
    if operation == "dilate":
        grown = expand_labels(np.where(is_picked, region, 0), radius)
        out = np.where((region == 0) & (grown != 0), grown, region)
    elif operation == "erode":
        out = np.where(is_picked & ~_erode_keep(region, radius), 0, region)
    elif operation == "open":
        core = _erode_keep(region, radius)
        near = ndi.distance_transform_edt(~core) <= radius
        out = np.where(is_picked & ~near, 0, region)
    elif operation == "close":
        grown = expand_labels(np.where(is_picked, region, 0), radius)
        grown = np.where(region != 0, region, grown)
        keep = _erode_keep(grown, radius)
        out = np.where((region == 0) & keep & np.isin(grown, picked), grown, region)
    else:
        out = _fill_holes(region, picked)
    new = out.astype(old.dtype).reshape(old.shape)
    return _make_edit(box, old, new)


# --------------------------------------------------------------------------- picking
def labels_at(labels: Any, coords: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Label values at data coordinates (rounded); ``InputError`` for points outside."""
    coords = np.atleast_2d(np.asarray(coords, float))
    if coords.size == 0:
        return np.zeros(0, np.int64)
    if coords.shape[1] != len(labels.shape):
        raise InputError(
            f"points have {coords.shape[1]} coordinates, the labels {len(labels.shape)} axes"
        )
    pts = np.round(coords).astype(np.int64)
    outside = np.any((pts < 0) | (pts >= np.array(labels.shape)), axis=1)
    if outside.any():
        bad = coords[outside][0]
        raise InputError(
            f"{int(outside.sum())} point(s) outside the labels (e.g. at "
            f"{np.round(bad, 1).tolist()}, shape {tuple(labels.shape)})"
        )
    values = []
    for p in pts:
        v = labels[tuple(slice(int(c), int(c) + 1) for c in p)]
        values.append(int(np.asarray(v).ravel()[0]))
    return np.array(values, np.int64)


def path_coordinates(vertices: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Integer coordinates every voxel along a polyline (the vertices of a line or path)."""
    vertices = np.atleast_2d(np.asarray(vertices, float))
    if len(vertices) == 1:
        return np.round(vertices).astype(np.int64)
    out = []
    for a, b in zip(vertices[:-1], vertices[1:], strict=True):
        n = int(np.ceil(np.abs(b - a).max())) + 1
        out.append(np.round(np.linspace(a, b, n)).astype(np.int64))
    return np.unique(np.concatenate(out), axis=0)


def label_location(
    labels: Any, label_id: int, *, index: LabelIndex, fixed: Mapping[int, int] | None = None
) -> tuple[int, ...]:
    """A voxel of ``label_id`` nearest its centroid (data coordinates), to jump to it."""
    box = index.union_box([int(label_id)], fixed)
    mask = _read(labels, box) == int(label_id)
    coords = np.argwhere(mask)
    if len(coords) == 0:
        raise InputError(f"label {label_id} has no voxel here")
    centre = coords.mean(0)
    best = coords[np.argmin(((coords - centre) ** 2).sum(1))]
    return tuple(int(c + s.start) for c, s in zip(best, box, strict=True))


# --------------------------------------------------------------------------- filter
def _filter_plane_ids(index: LabelIndex, min_size: int, border_axes: Sequence[int] | None):
    small = index.ids[index.counts < int(min_size)]
    edge = index.touching_border(border_axes) if border_axes is not None else np.zeros(0)
    return np.union1d(small, edge).astype(np.int64)


def filter_labels(
    labels: Any,
    *,
    min_size: int = 0,
    exclude_border: bool = False,
    spatial_ndim: int | None = None,
    index: LabelIndex | None = None,
) -> tuple[Any, np.ndarray]:
    """Labels without objects below ``min_size`` voxels and/or touching the border.

    Returns a new array (numpy for numpy input, a lazy dask array otherwise, so a zarr volume is
    never loaded) and the removed ids. With ``spatial_ndim`` smaller than ``labels.ndim`` each
    plane (or volume) along the leading axes is its own set of objects (2D+t stacks), and the
    border is that of the last ``spatial_ndim`` axes.
    """
    ndim = len(labels.shape)
    spatial_ndim = ndim if spatial_ndim is None else int(spatial_ndim)
    if not 1 <= spatial_ndim <= ndim:
        raise InputError(f"spatial_ndim must be in 1..{ndim}")
    lead = ndim - spatial_ndim
    border_axes = list(range(lead, ndim)) if exclude_border else None
    if lead == 0:
        index = index if index is not None else LabelIndex.build(labels)
        removed = _filter_plane_ids(index, min_size, border_axes)
        plan = {(): removed}
    else:
        plan = {}
        for lead_idx in np.ndindex(*labels.shape[:lead]):
            sub = LabelIndex.build(_read(labels, lead_idx))
            plan[lead_idx] = _filter_plane_ids(
                sub, min_size, None if border_axes is None else range(spatial_ndim)
            )
    all_removed = np.unique(np.concatenate([np.zeros(0, np.int64), *plan.values()]))
    if isinstance(labels, np.ndarray):
        out = labels.copy()
        for lead_idx, removed in plan.items():
            view = out[lead_idx]
            if len(removed):
                view[np.isin(view, removed)] = 0
        return out, all_removed
    import dask.array as da

    arr = labels if isinstance(labels, da.Array) else da.from_array(labels, chunks="auto")
    if lead == 0:
        removed = plan[()]
        return arr.map_blocks(lambda b: np.where(np.isin(b, removed), 0, b)), all_removed
    planes = []
    for lead_idx, removed in plan.items():
        planes.append(arr[lead_idx].map_blocks(lambda b, r=removed: np.where(np.isin(b, r), 0, b)))
    out = da.stack(planes).reshape(labels.shape)
    return out, all_removed


# --------------------------------------------------------------------------- measure
def _measure_volume(labels: Any, image: Any, block_voxels: int) -> dict[str, np.ndarray]:
    """Per-label sums over slabs with regionprops_table, combined exactly."""
    from skimage.measure import regionprops_table

    ndim = len(labels.shape)
    rows: list[dict[str, np.ndarray]] = []
    for box in _blocks(labels.shape, block_voxels):
        block = _read(labels, box)
        if not block.any():
            continue
        props = ["label", "area", "centroid", "bbox"]
        kwargs = {}
        if image is not None:
            props.append("intensity_mean")
            kwargs["intensity_image"] = _read(image, box).astype(np.float64)
        if block.dtype.kind == "u" and block.dtype.itemsize == 8:
            block = block.astype(np.int64)
        t = regionprops_table(block, properties=props, **kwargs)
        off = [s.start for s in box]
        area = t["area"].astype(np.float64)
        row = {"label": t["label"].astype(np.int64), "area": area}
        for d in range(ndim):
            row[f"csum-{d}"] = (t[f"centroid-{d}"] + off[d]) * area
            row[f"lo-{d}"] = t[f"bbox-{d}"] + off[d]
            row[f"hi-{d}"] = t[f"bbox-{d + ndim}"] + off[d]
        if image is not None:
            row["isum"] = t["intensity_mean"] * area
        rows.append(row)
    if not rows:
        return {}
    cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    ids, inverse = np.unique(cat["label"], return_inverse=True)
    out: dict[str, np.ndarray] = {"label": ids}
    for k, v in cat.items():
        if k == "label":
            continue
        if k.startswith("lo-"):
            acc = np.full(len(ids), np.iinfo(np.int64).max, np.int64)
            np.minimum.at(acc, inverse, v.astype(np.int64))
        elif k.startswith("hi-"):
            acc = np.zeros(len(ids), np.int64)
            np.maximum.at(acc, inverse, v.astype(np.int64))
        else:
            acc = np.zeros(len(ids), np.float64)
            np.add.at(acc, inverse, v)
        out[k] = acc
    return out


def measure_labels(
    labels: Any,
    image: Any | None = None,
    *,
    spacing: Sequence[float] | None = None,
    spatial_ndim: int | None = None,
    label_divisor: int | None = None,
    block_voxels: int = BLOCK_VOXELS,
) -> dict[str, np.ndarray]:
    """Per-label table: id, voxels, physical volume, bounding box, centroid, extent,
    mean intensity of ``image`` (when given) and whether the object touches the border.

    ``spacing`` is the voxel size per axis (the layer scale). Columns are numpy arrays of equal
    length (ready for pandas or CSV). Centroids and boxes are in data (voxel) coordinates. With
    ``spatial_ndim`` < ``labels.ndim`` each plane along the leading axes is measured on its
    own and ``index-<axis>`` columns say which. Blocks of ``block_voxels`` are read in turn.
    """
    ndim = len(labels.shape)
    spatial_ndim = ndim if spatial_ndim is None else int(spatial_ndim)
    if not 1 <= spatial_ndim <= ndim:
        raise InputError(f"spatial_ndim must be in 1..{ndim}")
    labels, image = _lazy(labels), None if image is None else _lazy(image)
    if image is not None and tuple(image.shape) != tuple(labels.shape):
        raise InputError(
            f"image shape {tuple(image.shape)} differs from labels shape {tuple(labels.shape)}"
        )
    spacing = np.ones(ndim) if spacing is None else np.asarray(spacing, float)
    if spacing.shape != (ndim,):
        raise InputError(f"spacing needs {ndim} values")
    lead = ndim - spatial_ndim
    tables = []
    for lead_idx in np.ndindex(*labels.shape[:lead]):
        sub_labels = labels[lead_idx] if lead else labels
        sub_image = (image[lead_idx] if lead else image) if image is not None else None
        raw = _measure_volume(sub_labels, sub_image, block_voxels)
        if not raw:
            continue
        n = len(raw["label"])
        area = raw["area"]
        table: dict[str, np.ndarray] = {}
        for axis, i in enumerate(lead_idx):
            table[f"index-{axis}"] = np.full(n, i, np.int64)
        table["label"] = raw["label"]
        if label_divisor:
            table["class"] = raw["label"] // int(label_divisor)
        table["voxels"] = area.astype(np.int64)
        table["volume"] = area * float(np.prod(spacing[lead:]))
        shape = labels.shape[lead:]
        box_vol = np.ones(n)
        touch = np.zeros(n, bool)
        for d in range(spatial_ndim):
            table[f"bbox-min-{d + lead}"] = raw[f"lo-{d}"]
        for d in range(spatial_ndim):
            table[f"bbox-max-{d + lead}"] = raw[f"hi-{d}"]
            box_vol *= raw[f"hi-{d}"] - raw[f"lo-{d}"]
            touch |= (raw[f"lo-{d}"] == 0) | (raw[f"hi-{d}"] == shape[d])
        for d in range(spatial_ndim):
            table[f"centroid-{d + lead}"] = raw[f"csum-{d}"] / area
        table["extent"] = area / box_vol
        if image is not None:
            table["mean_intensity"] = raw["isum"] / area
        table["touches_border"] = touch
        tables.append(table)
    if not tables:
        return {"label": np.zeros(0, np.int64), "voxels": np.zeros(0, np.int64)}
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def class_counts(ids: Iterable[int], label_divisor: int | None) -> dict[int, int]:
    """Number of objects per class (``id // label_divisor``; class 1 when no divisor)."""
    ids = np.asarray(list(ids), np.int64)
    ids = ids[ids != 0]
    if not label_divisor:
        return {1: len(ids)} if len(ids) else {}
    classes, counts = np.unique(ids // int(label_divisor), return_counts=True)
    return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


def table_to_csv(table: Mapping[str, np.ndarray], path: Any) -> None:
    """Write a :func:`measure_labels` table to CSV (header + one row per label)."""
    import csv

    keys = list(table)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(keys)
        for row in zip(*(table[k].tolist() for k in keys), strict=True):
            writer.writerow(row)
