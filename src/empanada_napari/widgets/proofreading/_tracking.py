"""One :class:`LabelIndex` per Labels layer, kept in step with every edit of the layer.

The index is built once per layer (in a worker: a pass over the whole volume) and shared by
all proofreading docks. Edits made elsewhere (painting, filling, undo, redo) are followed by
re-reading only the boxes those undo steps touched. :class:`LayerJob` is what one dock's job
needs from a layer: the index (or the means to build it off the GUI thread), a check that the
layer did not change while the job ran, and the write of the result as one undo step.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core import jobs
from ...core import proofread as pr
from ...core.errors import InputError
from .. import _napari_compat as compat

if TYPE_CHECKING:
    import napari


class _Tracker:
    """The index of one Labels layer plus the undo steps it has already seen."""

    def __init__(self, layer: napari.layers.Labels, index: pr.LabelIndex, seen: Any) -> None:
        self.data = layer.data
        self.index = index
        self.seen: list[Any] | None = seen

    def remember(self, layer: napari.layers.Labels) -> None:
        self.seen = compat.undo_items(layer)

    def sync(self, layer: napari.layers.Labels) -> bool:
        """Re-read the boxes of undo steps added or removed since the last call.

        False when the history cannot be read (the caller then rebuilds the index).
        """
        current = compat.undo_items(layer)
        if current is None or self.seen is None:
            return False
        # Identity, not equality: the lists hold the items, so their ids stay unique.
        seen_ids, current_ids = {id(s) for s in self.seen}, {id(c) for c in current}
        changed = [i for i in current if id(i) not in seen_ids]
        changed += [i for i in self.seen if id(i) not in current_ids]
        boxes = [b for item in changed for b in compat.item_boxes(item)]
        if boxes:
            lo = np.min([[s.start for s in b] for b in boxes], axis=0)
            hi = np.max([[s.stop for s in b] for b in boxes], axis=0)
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            self.index.update(layer.data, box)
        self.seen = current
        return True


_TRACKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BUSY: weakref.WeakSet = weakref.WeakSet()


def _check_layer(layer: napari.layers.Labels) -> None:
    if getattr(layer, "multiscale", False):
        raise InputError("multiscale labels are not supported: edit the full-resolution level")


def _synced_tracker(layer: napari.layers.Labels) -> _Tracker | None:
    """The layer's tracker brought up to date, or None when the index must be (re)built."""
    tracker = _TRACKERS.get(layer)
    if tracker is None:
        return None
    if tracker.data is not layer.data or not tracker.sync(layer):
        _TRACKERS.pop(layer, None)
        return None
    return tracker


def get_index(layer: napari.layers.Labels) -> pr.LabelIndex:
    """The up-to-date :class:`LabelIndex` of ``layer``, built here on first use (blocking)."""
    _check_layer(layer)
    tracker = _synced_tracker(layer)
    if tracker is None:
        tracker = _Tracker(layer, pr.LabelIndex.build(layer.data), compat.undo_items(layer))
        _TRACKERS[layer] = tracker
    return tracker.index


class LayerJob:
    """One proofreading job on a Labels layer. Open it on the GUI thread, call :meth:`index`
    in the worker, :meth:`write` (or :meth:`adopt`) and :meth:`close` on the GUI thread."""

    def __init__(self, layer: napari.layers.Labels) -> None:
        _check_layer(layer)
        if layer in _BUSY:
            raise InputError(
                f"another proofreading job is running on '{layer.name}': wait for it or cancel it"
            )
        self.layer = layer
        self.data = layer.data
        self.tracker = _synced_tracker(layer)
        # What the layer looked like when the job started: a write is refused if it changed,
        # and an index built from it follows the steps added since.
        self.seen = compat.undo_items(layer)
        self.marker = compat.history_marker(layer)
        self.built: pr.LabelIndex | None = None
        _BUSY.add(layer)

    def index(
        self, progress: jobs.Progress | None = None, cancel: jobs.CancelFlag = None
    ) -> pr.LabelIndex:
        """The layer's index; built here (progress and cancel per slab) on first use."""
        if self.tracker is not None:
            return self.tracker.index
        if self.built is None:
            self.built = pr.LabelIndex.build(self.data, progress=progress, cancel=cancel)
        return self.built

    def adopt(self) -> None:
        """Share an index built by this job with the other docks (GUI thread)."""
        if self.tracker is None and self.built is not None and self.layer.data is self.data:
            self.tracker = _Tracker(self.layer, self.built, self.seen)
            _TRACKERS[self.layer] = self.tracker

    def write(self, edit: pr.Edit) -> bool:
        """Write ``edit`` into the layer as one undo step; False when nothing changes."""
        self.adopt()
        if edit.n_changed == 0:
            return False
        if compat.history_changed(self.layer, self.marker):
            raise InputError(
                f"'{self.layer.name}' changed while the edit was computed: nothing was "
                "written; run it again"
            )
        compat.record_edit(self.layer, edit.box, edit.old, edit.new, edit.changed)
        if self.tracker is not None:
            self.tracker.index.update(
                self.layer.data, edit.box, old=edit.old, new=edit.new, changed=edit.changed
            )
            self.tracker.remember(self.layer)
        self.marker = compat.history_marker(self.layer)
        return True

    def close(self, *_: Any) -> None:
        """Let other jobs use the layer again."""
        _BUSY.discard(self.layer)
