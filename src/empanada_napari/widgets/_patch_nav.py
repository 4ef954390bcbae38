"""Picked patches in context: outlines on the source image, a table, and go to / next /
previous, which move the viewer to a patch on the source image with its labels on top.

The patch layers (one patch per step of their first axis) are moved over the source image
by their ``translate``: going to patch k shifts them so that patch k lies where it was cut,
in the plane it came from, and the viewer goes to that plane, centred and zoomed on it.
Editing the labels there edits patch k, as before; saving is unchanged.

Moved that way, the other patches of the stack lie on the neighbouring slices at patch k's
place, and the stack stretches napari's slider past the source's slices. So, while patches
are shown in context over a stack (:meth:`PatchNavigator.in_context`):

* the patch layers are shown (and editable) only on patch k's own slice: elsewhere the
  source is shown alone with the outlines of its own patches, and nothing can be painted
  into a patch nobody sees;
* the slider keeps the source's slices (0 to its last slice), so it reads the slice shown;
* a change of the slider's range (a patch layer moved or deleted) never moves the viewer off
  the slice it shows (napari's slider keeps its index, not its slice, when its range shrinks).

Over a 2D image the slider is the patch number: moving it goes to that patch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, PushButton

from . import _napari_compat as compat
from ._common import PATCHES_META

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
        self.plane: float | None = None  # world z of the patch shown (in context)
        self._here: float | None = None  # world z the viewer is on (the slider's slice)
        self._hidden: list[Any] = []  # patch layers hidden off their slice (shown back there)
        self._ranging = False  # napari is changing the slider's range
        self._moving = False  # go_to is moving the layers and the viewer
        # One Qt widget with the table above the buttons, for the dock's extra rows.
        from qtpy.QtWidgets import QVBoxLayout, QWidget

        self.panel = QWidget()
        box = QVBoxLayout(self.panel)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.table)
        box.addWidget(self.native)
        self.panel.setVisible(False)
        # napari holds bound methods weakly: a closed dock stops listening by itself.
        dims = viewer.dims
        dims.events.range.connect(self._range_changing, position="first")
        dims.events.range.connect(self._range_changed, position="last")
        dims.events.point.connect(self._slice_changed)
        viewer.layers.events.removed.connect(self._layer_removed)

    def show(self, source: Any, layers: list[Any], infos: list[dict]) -> None:
        """Fill the table for the patches just picked and go to the first one."""
        from qtpy.QtWidgets import QTableWidgetItem

        # The previous pick's layers stop following the viewer: hidden, so that none of
        # their patches lies over the source at another patch's place.
        for layer in self.layers:
            if layer not in layers and layer in self.viewer.layers:
                _set_shown(layer, False)
        self._hidden = []
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
        self.plane = None
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
        world_plane = (src_translate[-3] + plane * src_scale[-3]) if len(start) == 3 else 0.0
        self._moving = True
        try:
            # Where the viewer goes: kept there while moving the layers changes the range.
            self.plane = self._here = world_plane
            for layer in self.layers:
                translate = np.zeros(layer.ndim)
                translate[-2:] = src_translate[-2:] + yx * src_scale[-2:]
                lead = src_translate[-3] if len(start) == 3 else 0.0
                step = src_scale[-3] if len(start) == 3 else 1.0
                translate[0] = lead + (plane - k) * step
                layer.scale = (step, *src_scale[-2:])
                layer.translate = tuple(translate)
            # Zoom: "reset view" fits the whole image; the patch is that much smaller.
            self.viewer.reset_view()
            camera = compat.camera(self.viewer)
            extent = float(np.max(np.asarray(self.source.data.shape[-2:]) * src_scale[-2:]))
            size = float(np.max((stop[-2:] - start[-2:]) * src_scale[-2:]))
            camera.zoom = camera.zoom * 0.8 * extent / max(size, 1.0)
            centre = src_translate[-2:] + (start[-2:] + stop[-2:]) / 2 * src_scale[-2:]
            camera.center = (world_plane, *centre) if len(camera.center) == 3 else tuple(centre)
            self.viewer.dims.set_point(0, world_plane)
        finally:
            self._moving = False
        self._show_layers(True)
        if self.layers:
            self.viewer.layers.selection.active = self.layers[-1]

    # -- keeping the viewer's slice meaningful (see the module docstring)
    def _placed(self) -> bool:
        """Whether patch layers are placed over the source now (in context, 3D viewer)."""
        return (
            self.plane is not None
            and bool(self.layers)
            and self.source is not None
            and self.viewer.dims.ndim == 3
        )

    def _slice_step(self) -> float:
        return float(self.source.scale[-3]) if self.source.ndim == 3 else 1.0

    def _slice_changed(self, *_: Any) -> None:
        """The viewer moved along z: the patch layers show on their slice only; over a 2D
        image, moving the slider goes to the patch it points at."""
        if self._ranging or self._moving or self.viewer.dims.ndim != 3:
            return
        here = float(self.viewer.dims.point[0])
        self._here = here
        if not self._placed():
            return
        step = self._slice_step()
        if self.source.ndim == 2:
            k = self.current + int(round((here - self.plane) / step))
            if k != self.current and 0 <= k < len(self.infos):
                self.go_to(k)
            return
        self._show_layers(abs(here - self.plane) < step / 2)

    def _show_layers(self, shown: bool) -> None:
        if shown:
            for layer in self._hidden:
                if layer in self.viewer.layers:
                    _set_shown(layer, True)
            self._hidden = []
            return
        for layer in self.layers:
            if layer.visible and layer not in self._hidden:
                _set_shown(layer, False)
                self._hidden.append(layer)

    def _range_changing(self, *_: Any) -> None:
        self._ranging = True

    def _range_changed(self, *_: Any) -> None:
        """After napari changed the slider's range: back to the source's slices and to the
        slice the viewer was on."""
        self._ranging = False
        if not self._placed() or self._here is None:
            return
        dims = self.viewer.dims
        wanted = self._source_range() if self.source.ndim == 3 else None
        if wanted is not None and not np.allclose(tuple(dims.range[0]), wanted):
            dims.set_range(0, wanted)  # re-enters this method with the range wanted
            return
        lo, hi = dims.range[0][0], dims.range[0][1]
        if lo <= self._here <= hi and float(dims.point[0]) != self._here:
            dims.set_point(0, self._here)

    def _source_range(self) -> tuple[float, float, float] | None:
        """The slider's range without the patch layers: (first, last, step) along z."""
        others = [layer for layer in self.viewer.layers if PATCHES_META not in layer.metadata]
        if not others:
            return None
        extent = self.viewer.layers.get_extent(others)
        if len(extent.world[0]) != self.viewer.dims.ndim:
            return None
        return float(extent.world[0][0]), float(extent.world[1][0]), float(extent.step[0])

    def _layer_removed(self, event: Any) -> None:
        """A patch layer deleted: the others go on; without any, the table goes too."""
        layer = event.value
        if layer in self._hidden:
            self._hidden.remove(layer)
        if layer not in self.layers:
            return
        # Compared with ==: a plugin's viewer hands out proxies of the layers (not `is`).
        self.layers = [other for other in self.layers if other not in (layer,)]
        if not self.layers:
            self.plane, self.current, self.infos = None, -1, []
            self.table.setRowCount(0)
            self.panel.setVisible(False)


def _set_shown(layer: Any, shown: bool) -> None:
    """Show or hide a patch layer; a hidden one cannot be painted (napari paints into the
    selected layer even when it is hidden)."""
    layer.visible = shown
    if hasattr(layer, "editable"):
        layer.editable = shown
