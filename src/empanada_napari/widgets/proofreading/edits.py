"""Docks that edit labels: merge, split, delete, morph. Each edit is one napari undo step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, SpinBox

from ...core import proofread as pr
from ...core.errors import InputError
from .._pickers import LayerPicker
from ._dock import (
    DEFAULT_MODE,
    MODE_TIP,
    MODES,
    NO_DIVISOR_TIP,
    VOLUME,
    ProofreadDock,
    edit_finish,
    fixed_axes,
    picked_ids,
    view_plane,
)

if TYPE_CHECKING:
    import napari


def _mode_picker() -> ComboBox:
    return ComboBox(choices=MODES, value=DEFAULT_MODE, label="mode", tooltip=MODE_TIP)


class MergeLabels(ProofreadDock):
    """Merge the picked labels into the selected label (if picked), else the smallest."""

    run_text = "Merge"
    description = "Merging"
    pick_help = (
        "Pick: in a Points layer, click each label to merge (or draw a line across them in a "
        "Shapes layer). The picks are cleared after the merge."
    )

    def controls(self) -> list[Any]:
        self.shapes = LayerPicker(
            self.viewer, ("shapes",), extra=(("none", None),), label="lines/paths"
        )
        self.shapes.tooltip = "Optional: a Shapes layer whose lines pick every label they cross."
        self.mode = _mode_picker()
        return [self.shapes, self.mode]

    def needs_points(self) -> bool:
        return self.shapes.value is None

    def prepare(self, layer: napari.layers.Labels):
        points, shapes = self.points.value, self.shapes.value
        ids, _ = picked_ids(self.viewer, layer, points, shapes)
        fixed = fixed_axes(self.viewer, layer, self.mode.value)
        target = layer.selected_label

        def work(index, _progress, _cancel):
            return pr.merge_labels(layer.data, ids, index=index, target=target, fixed=fixed)

        def merged(edit: pr.Edit) -> str:
            layer.selected_label = edit.target
            return f"merged {edit.removed_ids} into {edit.target}"

        return work, edit_finish(merged, points, shapes)


class SplitLabels(ProofreadDock):
    """Split the picked label by distance-transform watershed, or at the points."""

    run_text = "Split"
    description = "Splitting"
    pick_help = (
        "Pick: in a Points layer, click the label to split; with 'use points as markers', "
        "click once in each piece instead. The picks are cleared after the split."
    )

    def controls(self) -> list[Any]:
        self.use_points_as_markers = CheckBox(value=False, text="use points as markers")
        self.use_points_as_markers.tooltip = "One point in each piece: the split follows them."
        self.min_distance = SpinBox(
            value=10,
            min=1,
            max=1000,
            label="min distance",
            tooltip="Smallest distance (voxels) between the centres of two pieces. Lower it "
            "when a label that should split stays whole.",
        )
        self.mode = _mode_picker()
        self.label_divisor = SpinBox(
            value=0, min=0, max=2**31 - 1, label="label divisor", tooltip=NO_DIVISOR_TIP
        )
        return [self.use_points_as_markers, self.min_distance, self.mode, self.label_divisor]

    def prepare(self, layer: napari.layers.Labels):
        points = self.points.value
        ids, coords = picked_ids(self.viewer, layer, points)
        if len(np.unique(ids)) != 1:
            raise InputError(f"pick one label to split, got {np.unique(ids).tolist()}")
        label_id = int(ids[0])
        markers = coords if self.use_points_as_markers.value else None
        kwargs = {
            "min_distance": self.min_distance.value,
            "fixed": fixed_axes(self.viewer, layer, self.mode.value),
            "label_divisor": self.label_divisor.value or None,
            # Seeds from the plane on screen: its pieces are what the user sees split.
            "plane": view_plane(self.viewer, layer) if self.mode.value == VOLUME else None,
            "spacing": tuple(layer.scale),
        }

        def work(index, _progress, _cancel):
            return pr.split_label(layer.data, label_id, index=index, markers=markers, **kwargs)

        return work, edit_finish(lambda e: f"split {label_id}: new labels {e.new_ids}", points)


class DeleteLabels(ProofreadDock):
    """Delete the labels under the points (in the current plane or in 3D)."""

    run_text = "Delete"
    description = "Deleting"
    pick_help = (
        "Pick: in a Points layer, click each label to delete. The picks are cleared after "
        "the deletion."
    )

    def controls(self) -> list[Any]:
        self.mode = _mode_picker()
        return [self.mode]

    def prepare(self, layer: napari.layers.Labels):
        points = self.points.value
        ids, _ = picked_ids(self.viewer, layer, points)
        fixed = fixed_axes(self.viewer, layer, self.mode.value)

        def work(index, _progress, _cancel):
            return pr.delete_labels(layer.data, ids, index=index, fixed=fixed)

        return work, edit_finish(lambda e: f"deleted {e.removed_ids}", points)


class MorphLabels(ProofreadDock):
    """Dilate, erode, open, close or fill holes of the picked labels (or all of them)."""

    run_text = "Apply"
    description = "Morphing"
    pick_help = (
        "Pick: in a Points layer, click the labels to change, or choose 'all labels'. The "
        "picks are cleared afterwards."
    )

    def controls(self) -> list[Any]:
        self.operation = ComboBox(choices=pr.MORPH_OPERATIONS, value="dilate", label="operation")
        self.operation.tooltip = "What to do to the labels. Default: dilate."
        self.radius = SpinBox(value=1, min=1, max=50, label="radius (voxels)")
        self.radius.tooltip = "Radius of the ball (a disk in plane mode). Default: 1."
        self.apply_to = ComboBox(choices=("picked labels", "all labels"), label="apply to")
        self.apply_to.tooltip = "The picked labels only, or every label of the layer."
        self.mode = _mode_picker()
        return [self.operation, self.radius, self.apply_to, self.mode]

    def needs_points(self) -> bool:
        return self.apply_to.value == "picked labels"

    def prepare(self, layer: napari.layers.Labels):
        points = self.points.value if self.needs_points() else None
        ids = picked_ids(self.viewer, layer, points)[0] if self.needs_points() else None
        operation, radius = self.operation.value, self.radius.value
        fixed = fixed_axes(self.viewer, layer, self.mode.value)

        def work(index, progress, cancel):
            return pr.morph_labels(
                layer.data,
                operation,
                radius,
                index=index,
                ids=ids,
                fixed=fixed,
                progress=progress,
                cancel=cancel,
            )

        def changed(edit: pr.Edit) -> str:
            return f"{operation}: {edit.n_changed} voxels changed"

        return work, edit_finish(changed, points, nothing=f"{operation}: nothing changed")
