"""Docks that find labels: jump to a label, find the next free id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import SpinBox

from ...core import proofread as pr
from .. import _napari_compat as compat
from ._dock import NO_DIVISOR_TIP, ProofreadDock

if TYPE_CHECKING:
    import napari


def show_location(
    viewer: napari.viewer.Viewer, labels: napari.layers.Labels, loc: tuple[int, ...]
) -> None:
    """Move the viewer to data position ``loc`` of ``labels``: the hidden axes' sliders to
    it and the camera centred on it."""
    world = np.asarray(labels.data_to_world(loc), float)
    offset = viewer.dims.ndim - len(world)
    for axis in range(len(world)):
        if axis + offset not in viewer.dims.displayed:
            viewer.dims.set_point(axis + offset, world[axis])
    displayed = [a - offset for a in viewer.dims.displayed if a - offset >= 0]
    cam = compat.camera(viewer)
    centre = np.asarray(cam.center, float)
    centre[len(centre) - len(displayed) :] = world[displayed]
    cam.center = tuple(centre)


def jump_to(
    viewer: napari.viewer.Viewer,
    labels: napari.layers.Labels,
    label_id: int,
    fixed: dict[int, int] | None = None,
    box: pr.Box | None = None,
) -> tuple[int, ...]:
    """Centre the view on a voxel of ``label_id`` and select it; returns that voxel.

    ``box`` (e.g. from a Measure table) is where to look; without it the layer's index says.
    """
    if box is None:
        from ._tracking import get_index

        loc = pr.label_location(labels.data, int(label_id), index=get_index(labels), fixed=fixed)
    else:
        loc = pr.label_location(labels.data, int(label_id), box=box, fixed=fixed)
    show_location(viewer, labels, loc)
    labels.selected_label = int(label_id)
    return loc


class JumpToLabel(ProofreadDock):
    """Move the viewer to a label and select it."""

    run_text = "Jump"
    description = "Finding the label"

    def controls(self) -> list[Any]:
        self.label_id = SpinBox(value=1, min=1, max=2**31 - 1, label="label id")
        self.label_id.tooltip = "The id of the label to go to."
        return [self.label_id]

    def prepare(self, layer: napari.layers.Labels):
        label_id = self.label_id.value

        def work(index, _progress, _cancel):
            return pr.label_location(layer.data, label_id, index=index)

        def finish(_session, loc: tuple[int, ...]) -> str:
            show_location(self.viewer, layer, loc)
            layer.selected_label = label_id
            return f"label {label_id} at {list(loc)}"

        return work, finish


class NextAvailableLabel(ProofreadDock):
    """Select an id no object uses (inside the class range when a divisor is set)."""

    run_text = "Find"
    description = "Looking for a free id"

    def controls(self) -> list[Any]:
        self.class_id = SpinBox(value=1, min=0, max=2**31 - 1, label="class id")
        self.class_id.tooltip = "With a label divisor: the class whose next free id is wanted."
        self.label_divisor = SpinBox(
            value=0, min=0, max=2**31 - 1, label="label divisor", tooltip=NO_DIVISOR_TIP
        )
        return [self.class_id, self.label_divisor]

    def prepare(self, layer: napari.layers.Labels):
        divisor = self.label_divisor.value or None
        class_id = self.class_id.value if divisor else None

        def work(index, _progress, _cancel):
            return index.next_available(class_id=class_id, label_divisor=divisor)[0]

        def finish(_session, new: int) -> str:
            layer.selected_label = new
            return f"next available label: {new}"

        return work, finish
