"""Picked patches in context: outlines on the source image, a table, and go to / next /
previous, which move the viewer to a patch on the source image with its labels on top.

The patch layers (one patch per step of their first axis) are moved over the source image
by their ``translate``: going to patch k shifts them so that patch k lies where it was cut,
in the plane it came from, and the viewer goes to that plane, centred and zoomed on it.
Editing the labels there edits patch k, as before; saving is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, PushButton

from . import _napari_compat as compat

if TYPE_CHECKING:
    import napari

COLUMNS = ("#", "slice", "y", "x", "objects", "doubt")


def patch_rows(infos: list[dict], labels: np.ndarray | None) -> list[tuple]:
    """One table row per patch: index, plane, y, x (top-left in the source), objects
    prefilled, doubt score."""
    rows = []
    for k, info in enumerate(infos):
        start, stop = info["start"], info["stop"]
        axis = int(info.get("axis", 0))
        if len(start) == 3:
            plane = (start[axis] + stop[axis] - 1) // 2
            a, b = [i for i in range(3) if i != axis]
        else:
            plane, (a, b) = "", (0, 1)
        objects = ""
        if labels is not None:
            ids = np.unique(np.asarray(labels[k]))
            objects = int((ids != 0).sum())
        doubt = info.get("doubt", "")
        rows.append((k, plane, start[a], start[b], objects, doubt))
    return rows


def outlines(infos: list[dict], ndim: int) -> list[np.ndarray]:
    """Rectangles (in the source's data coordinates) where the patches were cut."""
    shapes = []
    for info in infos:
        start, stop = info["start"], info["stop"]
        axis = int(info.get("axis", 0))
        if len(start) == 3 and axis == 0:
            z = (start[0] + stop[0] - 1) // 2
            y0, x0, y1, x1 = start[1], start[2], stop[1], stop[2]
            shapes.append(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float))
        elif len(start) == 2:
            y0, x0, y1, x1 = start[0], start[1], stop[0], stop[1]
            shapes.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float))
    return shapes if len(shapes) == len(infos) and ndim in (2, 3) else []


class PatchNavigator(Container):
    """The table of picked patches with Previous / Next (clicking a row goes to it)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from qtpy.QtWidgets import QAbstractItemView, QTableWidget

        self.viewer = viewer
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(120)
        self.table.setMaximumHeight(200)
        self.table.setToolTip(
            "The picked patches: where each was cut (slice, top-left y and x), how many "
            "objects the prefill holds and the model's doubt. Click a row to go to it."
        )
        self.previous = PushButton(text="< Previous")
        self.previous.tooltip = "Go to the previous patch on the source image"
        self.next = PushButton(text="Next >")
        self.next.tooltip = "Go to the next patch on the source image"
        super().__init__(widgets=[self.previous, self.next], layout="horizontal", labels=False)
        self.previous.changed.connect(lambda *_: self.step(-1))
        self.next.changed.connect(lambda *_: self.step(1))
        self.table.cellClicked.connect(lambda row, _col: self.go_to(row))
        self.source: Any = None
        self.layers: list[Any] = []
        self.infos: list[dict] = []
        self.current = -1
        # One Qt widget with the table above the buttons, for the dock's extra rows.
        from qtpy.QtWidgets import QVBoxLayout, QWidget

        self.panel = QWidget()
        box = QVBoxLayout(self.panel)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.table)
        box.addWidget(self.native)
        self.panel.setVisible(False)

    def show(self, source: Any, layers: list[Any], infos: list[dict]) -> None:
        """Fill the table for the patches just picked and go to the first one."""
        from qtpy.QtWidgets import QTableWidgetItem

        self.source, self.layers, self.infos = source, layers, infos
        labels = layers[-1].data if layers else None
        rows = patch_rows(infos, labels if labels is not None and labels.ndim == 3 else None)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, value in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(str(value)))
        self.table.resizeColumnsToContents()
        self.panel.setVisible(True)
        self.current = -1
        if infos:
            self.go_to(0)

    def in_context(self) -> bool:
        """Whether patches can be shown where they were cut (one plane each, along z)."""

        def one_plane(info: dict) -> bool:
            start, stop = info["start"], info["stop"]
            flat_z = int(info.get("axis", 0)) == 0 and stop[0] - start[0] == 1
            return len(start) == 2 or flat_z

        return bool(self.infos) and all(one_plane(i) for i in self.infos)

    def step(self, delta: int) -> None:
        if self.infos:
            self.go_to((self.current + delta) % len(self.infos))

    def go_to(self, k: int) -> None:
        """Show patch ``k`` where it was cut: its layers moved there, the viewer on its plane,
        centred and zoomed on it."""
        if not 0 <= k < len(self.infos):
            return
        self.current = k
        self.table.selectRow(k)
        info = self.infos[k]
        start, stop = np.asarray(info["start"], float), np.asarray(info["stop"], float)
        if not self.in_context() or self.source is None:
            self.viewer.dims.set_current_step(0, k)  # patches as a stack
            return
        src_scale = np.asarray(self.source.scale, float)
        src_translate = np.asarray(self.source.translate, float)
        plane = start[0] if len(start) == 3 else 0.0
        yx = start[-2:]
        for layer in self.layers:
            translate = np.zeros(layer.ndim)
            translate[-2:] = src_translate[-2:] + yx * src_scale[-2:]
            lead = src_translate[-3] if len(start) == 3 else 0.0
            step = src_scale[-3] if len(start) == 3 else 1.0
            translate[0] = lead + (plane - k) * step
            layer.scale = (step, *src_scale[-2:])
            layer.translate = tuple(translate)
        world_plane = (src_translate[-3] + plane * src_scale[-3]) if len(start) == 3 else 0.0
        # Zoom: "reset view" fits the whole image; the patch is that much smaller.
        self.viewer.reset_view()
        camera = compat.camera(self.viewer)
        extent = float(np.max(np.asarray(self.source.data.shape[-2:]) * src_scale[-2:]))
        size = float(np.max((stop[-2:] - start[-2:]) * src_scale[-2:]))
        camera.zoom = camera.zoom * 0.8 * extent / max(size, 1.0)
        centre = src_translate[-2:] + (start[-2:] + stop[-2:]) / 2 * src_scale[-2:]
        camera.center = (world_plane, *centre) if len(camera.center) == 3 else tuple(centre)
        self.viewer.dims.set_point(0, world_plane)
        if self.layers:
            self.viewer.layers.selection.active = self.layers[-1]
