"""Edits of a labels array: the :class:`Edit` record, merge and delete.

Editing functions never mutate their inputs: they return an :class:`Edit` (the box, the old and
the new values in it). :meth:`Edit.apply` and :meth:`Edit.revert` are the explicit in-place
writes of that box; :func:`apply_edit` also brings a :class:`LabelIndex` up to date.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from empanada_napari.core.errors import InputError

from ._boxes import Box, as_ids, has_ids, read
from .index import LabelIndex


@dataclass
class Edit:
    """One change of a labels array: ``labels[box]`` goes from ``old`` to ``new``.

    ``box`` is trimmed to the voxels that change (an empty box when nothing changes: then
    :meth:`apply` and :meth:`revert` do nothing). ``new_ids`` lists ids the edit created
    (split), ``removed_ids`` ids it made disappear from the box, ``target`` the id voxels were
    merged into.
    """

    box: Box
    old: np.ndarray
    new: np.ndarray
    new_ids: list[int] = field(default_factory=list)
    removed_ids: list[int] = field(default_factory=list)
    target: int | None = None

    @cached_property
    def changed(self) -> np.ndarray:
        """Where the box's values change (computed once: writing an edit of a big box
        into a layer, its undo step and the index all need it)."""
        return self.old != self.new

    @property
    def n_changed(self) -> int:
        """Number of voxels whose value changes."""
        return int(np.count_nonzero(self.changed))

    def apply(self, labels: Any) -> None:
        """Write ``new`` into ``labels[box]`` (in place, only the box)."""
        if self.old.size:
            labels[self.box] = self.new

    def revert(self, labels: Any) -> None:
        """Write ``old`` back into ``labels[box]`` (in place, only the box)."""
        if self.old.size:
            labels[self.box] = self.old


def make_edit(box: Box, old: np.ndarray, new: np.ndarray, **info: Any) -> Edit:
    """An :class:`Edit` trimmed to the bounding box of the changed voxels."""
    changed = old != new
    if not changed.any():
        empty = np.zeros((0,) * old.ndim, old.dtype)
        return Edit(tuple(slice(s.start, s.start) for s in box), empty, empty.copy(), **info)
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


def picked(index: LabelIndex, ids: Iterable[int] | int, what: str) -> np.ndarray:
    """The picked ids, checked: at least one, no background, all present in ``index``."""
    ids = as_ids(ids)
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
    ids = picked(index, ids, "merge")
    if len(ids) < 2:
        raise InputError("pick at least two different labels to merge")
    # A target that is not one of the picks (e.g. the layer's selected label) is ignored.
    target = int(target) if target is not None and int(target) in ids.tolist() else int(ids.min())
    box = index.union_box(ids, fixed)
    old = read(labels, box)
    new = np.where(has_ids(old, ids), old.dtype.type(target), old)
    removed = [int(i) for i in ids if i != target]
    return make_edit(box, old, new, removed_ids=removed, target=target)


def delete_labels(
    labels: Any,
    ids: Iterable[int],
    *,
    index: LabelIndex,
    fixed: Mapping[int, int] | None = None,
) -> Edit:
    """Set the voxels of ``ids`` to 0 (in their boxes, restricted to ``fixed``)."""
    ids = picked(index, ids, "delete")
    box = index.union_box(ids, fixed)
    old = read(labels, box)
    new = np.where(has_ids(old, ids), old.dtype.type(0), old)
    return make_edit(box, old, new, removed_ids=[int(i) for i in ids])
