"""The label index: per-label bounding boxes and voxel counts, built once, updated per edit."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from empanada_napari.core import jobs
from empanada_napari.core.errors import InputError

from ._boxes import (
    BLOCK_VOXELS,
    MAX_ID,
    Box,
    as_ids,
    blocks,
    check_fixed,
    group,
    has_ids,
    objects,
    positive_int,
    read,
)


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
    def build(
        cls,
        labels: Any,
        block_voxels: int = BLOCK_VOXELS,
        *,
        progress: jobs.Progress | None = None,
        cancel: jobs.CancelFlag = None,
    ) -> LabelIndex:
        """Index ``labels`` with one chunked pass (slabs of ``block_voxels`` along axis 0).

        ``progress(done, total)`` counts slabs; ``cancel`` is checked before each slab.
        """
        shape = tuple(int(s) for s in labels.shape)
        parts = []
        slabs = blocks(shape, block_voxels)
        for done, box in enumerate(slabs):
            jobs.check_cancelled(cancel, "Indexing the labels was cancelled.")
            ids, lo, hi, counts = objects(read(labels, box))
            offset = np.array([s.start for s in box], np.int64)
            parts.append((ids, lo + offset, hi + offset, counts))
            jobs.report(progress, done + 1, len(slabs))
        if not parts:
            return cls(shape)
        cat = [np.concatenate([p[i] for p in parts]) for i in range(4)]
        ids, lo, hi, counts = group(*cat)
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
        if not 0 <= label_id <= MAX_ID:
            return None
        i = int(np.searchsorted(self.ids, label_id))
        return i if i < len(self.ids) and self.ids[i] == label_id else None

    def _rows(self, ids: Iterable[int]) -> np.ndarray:
        ids = as_ids(ids)
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
        for axis, index in check_fixed(self.shape, fixed).items():
            inside = (self.lo[rows, axis] <= index) & (index < self.hi[rows, axis])
            if not inside.any():
                raise InputError(
                    f"label(s) {as_ids(ids).tolist()} have no voxel at index {index} of axis {axis}"
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
        n = positive_int(n, "number of ids")
        if label_divisor:
            divisor = positive_int(label_divisor, "label divisor")
            class_id = positive_int(class_id or 0, "class id", minimum=0)
            first = class_id * divisor + 1
            stop = first - 1 + divisor
            if stop > MAX_ID:
                raise InputError(
                    f"class {class_id} with label divisor {divisor} needs ids above 2**63 - 1"
                )
        else:
            first, stop = 1, MAX_ID
        lo_i, hi_i = np.searchsorted(self.ids, [first, stop])
        used = self.ids[lo_i:hi_i]
        start = int(used[-1]) + 1 if len(used) else first
        out = list(range(start, min(start + n, stop)))
        if len(out) < n:
            # Past the end of the range: reuse gaps below the largest id in use.
            out += _gaps(first, used, n - len(out))
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
        changed: np.ndarray | None = None,
    ) -> None:
        """Bring the index up to date after ``labels[box]`` changed (call after the write).

        With ``old`` and ``new`` (the box before and after, as an :class:`Edit` carries them)
        only labels that lost or gained voxels are touched and usually nothing is read;
        a label that lost voxels and extends beyond ``box`` has its own box re-read. Without
        them (e.g. after an undo), the box and the boxes of the labels around it are re-read.
        ``changed`` (``old != new``) saves computing it again for a big box.
        """
        box = tuple(slice(int(s.start), int(s.stop)) for s in box)
        if any(s.stop <= s.start for s in box):
            return  # an empty box (an edit that changed nothing)
        offset = np.array([s.start for s in box], np.int64)
        if new is None:
            new = read(labels, box)
        if old is None:
            self._update_generic(labels, box, new)
            return
        changed = old != new if changed is None else changed  # the caller's, when it has it
        if not changed.any():
            return
        lost_ids, lost_n = np.unique(old[changed], return_counts=True)
        gain_ids, gain_n = np.unique(new[changed], return_counts=True)
        delta: dict[int, int] = {}
        for i, c in zip(lost_ids, lost_n, strict=True):
            delta[int(i)] = delta.get(int(i), 0) - int(c)
        for i, c in zip(gain_ids, gain_n, strict=True):
            delta[int(i)] = delta.get(int(i), 0) + int(c)
        lost = {int(i) for i in lost_ids}
        box_lo = offset
        box_hi = np.array([s.stop for s in box], np.int64)
        # The boxes, inside the edited box, of the labels that keep or gain voxels (a delete
        # needs none: the label is gone), found in one pass over the box.
        alive = [
            label
            for label, d in delta.items()
            if label != 0
            and (int(self.counts[r]) if (r := self._row(label)) is not None else 0) + d > 0
        ]
        in_box = {}
        if alive:
            n_ids, n_lo, n_hi, _ = objects(np.where(has_ids(new, alive), new, 0))
            in_box = {
                int(i): (lo + offset, hi + offset)
                for i, lo, hi in zip(n_ids, n_lo, n_hi, strict=True)
            }
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
            region = read(labels, region_box)
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
        region = new if region_box == box else read(labels, region_box)
        ids, lo, hi, counts = objects(np.where(has_ids(region, affected), region, 0))
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


def _gaps(first: int, used: np.ndarray, need: int) -> list[int]:
    """The first ``need`` ids from ``first`` on that are not in the sorted ``used``."""
    out: list[int] = []
    candidate = first
    for u in used.tolist():
        while candidate < u and len(out) < need:
            out.append(candidate)
            candidate += 1
        if len(out) >= need:
            break
        candidate = max(candidate, u + 1)
    return out
