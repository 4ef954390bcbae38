"""Proofreading dock widgets: thin layers over :mod:`empanada_napari.core.proofread`.

Each dock reads its inputs on the GUI thread (a Labels layer, picks from a Points or Shapes
layer, the view mode), runs the core in a worker (napari ``thread_worker`` through
``JobPanel``, with progress and Cancel) and writes the result back on the GUI thread as one
step of the layer's undo history, so Ctrl+Z restores it exactly. One :class:`LabelIndex` per
Labels layer is shared by all docks and kept in step with edits made elsewhere (painting,
undo, redo) by re-reading only the boxes those steps touched (``_tracking``); everything that
touches napari's private API is in ``widgets/_napari_compat.py``.

Modules: ``_dock`` (picking, the dock base), ``edits`` (merge, split, delete, morph),
``click`` (Click to Add: the model draws the clicked object),
``navigate`` (jump, next free id), ``measure`` (filter, measure).
"""

from __future__ import annotations

from ._dock import (
    MODES,
    PLANE,
    VOLUME,
    ProofreadDock,
    fixed_axes,
    per_plane,
    picked_ids,
    view_plane,
)
from ._tracking import LayerJob, get_index
from .click import ClickToAdd
from .edits import DeleteLabels, MergeLabels, MorphLabels, SplitLabels
from .measure import FilterLabels, MeasureLabels
from .navigate import JumpToLabel, NextAvailableLabel, jump_to

# The names the napari manifest (napari.yaml) points at.
merge_labels_widget = MergeLabels
split_labels_widget = SplitLabels
delete_labels_widget = DeleteLabels
morph_labels_widget = MorphLabels
jump_to_label_widget = JumpToLabel
next_label_widget = NextAvailableLabel
filter_labels_widget = FilterLabels
click_to_add_widget = ClickToAdd

__all__ = [
    "MODES",
    "PLANE",
    "VOLUME",
    "ClickToAdd",
    "DeleteLabels",
    "FilterLabels",
    "JumpToLabel",
    "LayerJob",
    "MeasureLabels",
    "MergeLabels",
    "MorphLabels",
    "NextAvailableLabel",
    "ProofreadDock",
    "SplitLabels",
    "fixed_axes",
    "get_index",
    "jump_to",
    "per_plane",
    "picked_ids",
    "view_plane",
]
