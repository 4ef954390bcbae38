"""Proofreading dock widgets: thin layers over :mod:`empanada_napari.core.proofread`.

Each widget parses its inputs (a Labels layer, picks from a Points or Shapes layer, the view
mode), calls the core on the bounding box of the labels concerned and writes the result back
through the layer's undo history, so Ctrl+Z restores it exactly. One :class:`LabelIndex` per
Labels layer is shared by all widgets and kept in step with edits made elsewhere (painting,
undo, redo) by re-reading only the boxes those history items touched.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui import magic_factory
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning

from empanada_napari.core import proofread as pr
from empanada_napari.core.errors import EmpanadaError, InputError

if TYPE_CHECKING:
    import napari

PLANE, VOLUME = "current plane", "3D"
MODES = (PLANE, VOLUME)


# --------------------------------------------------------------------------- the shared index
class _Tracker:
    """The index of one Labels layer plus the history items it has already seen."""

    def __init__(self, layer: napari.layers.Labels) -> None:
        self.data = layer.data
        self.index = pr.LabelIndex.build(layer.data)
        self.seen: list[Any] = []
        self.remember(layer)

    def remember(self, layer: napari.layers.Labels) -> None:
        self.seen = list(getattr(layer, "_undo_history", ()))

    def sync(self, layer: napari.layers.Labels) -> None:
        """Re-read the boxes of history items applied or undone since the last call."""
        current = list(getattr(layer, "_undo_history", ()))
        new = [item for item in current if not any(item is s for s in self.seen)]
        gone = [item for item in self.seen if not any(item is c for c in current)]
        boxes = [b for item in new + gone for b in map(_atom_box, item) if b is not None]
        if boxes:
            lo = np.min([[s.start for s in b] for b in boxes], axis=0)
            hi = np.max([[s.stop for s in b] for b in boxes], axis=0)
            box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
            self.index.update(layer.data, box)
        self.seen = current


def _atom_box(atom: Any) -> tuple[slice, ...] | None:
    """Bounding box of a napari history atom (masked paint atom or (indices, old, new))."""
    key = getattr(atom, "slice_key", None)
    if key is None:
        try:
            key = atom[0]
        except (TypeError, IndexError):
            return None
    out = []
    for k in key:
        if isinstance(k, slice):
            out.append(slice(k.start or 0, k.stop))
        else:
            k = np.asarray(k)
            if k.size == 0:
                return None
            out.append(slice(int(k.min()), int(k.max()) + 1))
    return tuple(out)


_TRACKERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_index(layer: napari.layers.Labels) -> pr.LabelIndex:
    """The up-to-date :class:`LabelIndex` of ``layer`` (built on first use)."""
    if getattr(layer, "multiscale", False):
        raise InputError("multiscale labels are not supported: edit the full-resolution level")
    tracker = _TRACKERS.get(layer)
    if tracker is None or tracker.data is not layer.data:
        tracker = _Tracker(layer)
        _TRACKERS[layer] = tracker
        layer.events.data.connect(lambda _e, ref=weakref.ref(layer): _TRACKERS.pop(ref(), None))
    else:
        tracker.sync(layer)
    return tracker.index


def write_edit(layer: napari.layers.Labels, edit: pr.Edit) -> bool:
    """Write ``edit`` into ``layer`` as one undoable step; False when nothing changed."""
    if edit.old.size == 0 or edit.n_changed == 0:
        return False
    index = get_index(layer)
    # A (box, old, new) atom replays with basic slicing only, so undo/redo work on numpy,
    # zarr and dask data alike and touch only the box.
    layer._save_history((edit.box, edit.old, edit.new))
    edit.apply(layer.data)
    index.update(layer.data, edit.box, old=edit.old, new=edit.new)
    _TRACKERS[layer].remember(layer)
    layer.refresh()
    return True


# --------------------------------------------------------------------------- picking
def fixed_axes(
    viewer: napari.viewer.Viewer, layer: napari.layers.Labels, mode: str
) -> dict[int, int]:
    """Axes of ``layer`` held at the viewer's position: all hidden ones in plane mode, the
    leading ones beyond the last three (time, channel) in 3D mode."""
    ndim = layer.ndim
    position = np.round(layer.world_to_data(viewer.dims.point)).astype(int)
    position = np.clip(position, 0, np.array(layer.data.shape) - 1)
    offset = viewer.dims.ndim - ndim
    if mode == PLANE:
        axes = [a - offset for a in viewer.dims.not_displayed if a - offset >= 0]
    else:
        axes = list(range(max(0, ndim - 3)))
    return {int(a): int(position[a]) for a in axes}


def _to_labels_coords(
    viewer: napari.viewer.Viewer, source: Any, coords: np.ndarray, labels: Any
) -> np.ndarray:
    """Data coordinates of ``source`` (Points/Shapes) in the data frame of ``labels``."""
    out = []
    for c in np.atleast_2d(coords):
        world = np.asarray(source.data_to_world(c), float)
        full = np.asarray(viewer.dims.point, float).copy()
        full[len(full) - len(world) :] = world
        out.append(labels.world_to_data(full))
    return np.array(out, float).reshape(-1, labels.ndim)


def picked_ids(
    viewer: napari.viewer.Viewer,
    labels: napari.layers.Labels,
    points: napari.layers.Points | None,
    shapes: napari.layers.Shapes | None = None,
    *,
    allow_background: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Label ids under the points (and along Shapes lines/paths), and the data coordinates."""
    coords = []
    if points is not None and len(points.data):
        coords.append(_to_labels_coords(viewer, points, points.data, labels))
    if shapes is not None:
        for data, kind in zip(shapes.data, shapes.shape_type, strict=True):
            if kind in ("line", "path"):
                verts = _to_labels_coords(viewer, shapes, data, labels)
                coords.append(pr.path_coordinates(verts).astype(float))
    if points is None and shapes is None:
        raise InputError("no Points layer: add one and click on the labels to pick them")
    if not coords:
        raise InputError("no pick: add points on the labels (or draw a line through them)")
    coords = np.concatenate(coords)
    values = pr.labels_at(labels.data, coords)
    if not allow_background and shapes is None and (values == 0).any():
        raise InputError(
            f"{int((values == 0).sum())} point(s) on the background (label 0): pick labels"
        )
    return values[values != 0] if shapes is not None else values, coords


def _report(action: Callable[[], str | None]) -> None:
    """Run ``action``; show its message, or a bad pick as an error instead of a traceback."""
    try:
        message = action()
    except EmpanadaError as err:
        show_error(str(err))
        return
    if message:
        show_info(message)


# --------------------------------------------------------------------------- merge
@magic_factory(
    call_button="Merge",
    labels_layer={"label": "labels"},
    mode={"choices": MODES},
    shapes={"label": "lines/paths"},
)
def merge_labels_widget(
    viewer: napari.viewer.Viewer,
    labels_layer: napari.layers.Labels,
    points: napari.layers.Points | None = None,
    shapes: napari.layers.Shapes | None = None,
    mode: str = VOLUME,
) -> None:
    """Merge the picked labels into the selected label (if picked), else the smallest."""

    def run() -> str:
        ids, _ = picked_ids(viewer, labels_layer, points, shapes)
        index = get_index(labels_layer)
        edit = pr.merge_labels(
            labels_layer.data,
            ids,
            index=index,
            target=labels_layer.selected_label,
            fixed=fixed_axes(viewer, labels_layer, mode),
        )
        write_edit(labels_layer, edit)
        labels_layer.selected_label = edit.target
        return f"merged {edit.removed_ids} into {edit.target}"

    _report(run)


# --------------------------------------------------------------------------- split
@magic_factory(
    call_button="Split",
    labels_layer={"label": "labels"},
    mode={"choices": MODES},
    min_distance={"min": 1, "max": 1000},
    label_divisor={"min": 0, "max": 2**31 - 1, "tooltip": "0: no class scheme"},
)
def split_labels_widget(
    viewer: napari.viewer.Viewer,
    labels_layer: napari.layers.Labels,
    points: napari.layers.Points | None = None,
    use_points_as_markers: bool = False,
    min_distance: int = 10,
    mode: str = VOLUME,
    label_divisor: int = 0,
) -> None:
    """Split the label under the point(s) by distance-transform watershed or at markers."""

    def run() -> str:
        ids, coords = picked_ids(viewer, labels_layer, points)
        if len(np.unique(ids)) != 1:
            raise InputError(f"pick one label to split, got {np.unique(ids).tolist()}")
        edit = pr.split_label(
            labels_layer.data,
            int(ids[0]),
            index=get_index(labels_layer),
            min_distance=min_distance,
            markers=coords if use_points_as_markers else None,
            fixed=fixed_axes(viewer, labels_layer, mode),
            label_divisor=label_divisor or None,
        )
        write_edit(labels_layer, edit)
        return f"split {int(ids[0])}: new labels {edit.new_ids}"

    _report(run)


# --------------------------------------------------------------------------- delete
@magic_factory(call_button="Delete", labels_layer={"label": "labels"}, mode={"choices": MODES})
def delete_labels_widget(
    viewer: napari.viewer.Viewer,
    labels_layer: napari.layers.Labels,
    points: napari.layers.Points | None = None,
    mode: str = VOLUME,
) -> None:
    """Delete the labels under the points (in the current plane or in 3D)."""

    def run() -> str:
        ids, _ = picked_ids(viewer, labels_layer, points)
        edit = pr.delete_labels(
            labels_layer.data,
            ids,
            index=get_index(labels_layer),
            fixed=fixed_axes(viewer, labels_layer, mode),
        )
        write_edit(labels_layer, edit)
        return f"deleted {edit.removed_ids}"

    _report(run)


# --------------------------------------------------------------------------- morph
@magic_factory(
    call_button="Apply",
    labels_layer={"label": "labels"},
    operation={"choices": pr.MORPH_OPERATIONS},
    apply_to={"choices": ("picked labels", "all labels")},
    mode={"choices": MODES},
    radius={"min": 1, "max": 50},
)
def morph_labels_widget(
    viewer: napari.viewer.Viewer,
    labels_layer: napari.layers.Labels,
    points: napari.layers.Points | None = None,
    operation: str = "dilate",
    radius: int = 1,
    apply_to: str = "picked labels",
    mode: str = PLANE,
) -> None:
    """Dilate, erode, open, close or fill holes of the picked labels (or all of them)."""

    def run() -> str:
        ids = None
        if apply_to == "picked labels":
            ids, _ = picked_ids(viewer, labels_layer, points)
        edit = pr.morph_labels(
            labels_layer.data,
            operation,
            radius,
            index=get_index(labels_layer),
            ids=ids,
            fixed=fixed_axes(viewer, labels_layer, mode),
        )
        if not write_edit(labels_layer, edit):
            return f"{operation}: nothing changed"
        return f"{operation}: {edit.n_changed} voxels changed"

    _report(run)


# --------------------------------------------------------------------------- jump / next id
def jump_to(
    viewer: napari.viewer.Viewer,
    labels: napari.layers.Labels,
    label_id: int,
    fixed: dict[int, int] | None = None,
) -> tuple[int, ...]:
    """Centre the view on a voxel of ``label_id`` and select it; returns that voxel."""
    loc = pr.label_location(labels.data, int(label_id), index=get_index(labels), fixed=fixed)
    world = np.asarray(labels.data_to_world(loc), float)
    offset = viewer.dims.ndim - len(world)
    for axis in range(len(world)):
        if axis + offset not in viewer.dims.displayed:
            viewer.dims.set_point(axis + offset, world[axis])
    displayed = [a - offset for a in viewer.dims.displayed if a - offset >= 0]
    viewer.camera.center = tuple(world[displayed])
    labels.selected_label = int(label_id)
    return loc


@magic_factory(
    call_button="Jump", labels_layer={"label": "labels"}, label_id={"min": 1, "max": 2**31 - 1}
)
def jump_to_label_widget(
    viewer: napari.viewer.Viewer, labels_layer: napari.layers.Labels, label_id: int = 1
) -> None:
    """Move the viewer to a label and select it."""

    def run() -> str:
        loc = jump_to(viewer, labels_layer, label_id)
        return f"label {label_id} at {list(loc)}"

    _report(run)


@magic_factory(
    call_button="Find",
    labels_layer={"label": "labels"},
    class_id={"min": 0, "max": 2**31 - 1},
    label_divisor={"min": 0, "max": 2**31 - 1, "tooltip": "0: no class scheme"},
)
def next_label_widget(
    labels_layer: napari.layers.Labels, class_id: int = 1, label_divisor: int = 0
) -> None:
    """Select an id no object uses (inside the class range when a divisor is set)."""

    def run() -> str:
        new = get_index(labels_layer).next_available(
            class_id=class_id if label_divisor else None, label_divisor=label_divisor or None
        )[0]
        labels_layer.selected_label = new
        return f"next available label: {new}"

    _report(run)


# --------------------------------------------------------------------------- filter
@magic_factory(
    call_button="Filter",
    labels_layer={"label": "labels"},
    min_size={"min": 0, "max": 2**31 - 1, "label": "min size (voxels)"},
    per_plane={"tooltip": "2D+t: each plane along the leading axes has its own objects"},
)
def filter_labels_widget(
    viewer: napari.viewer.Viewer,
    labels_layer: napari.layers.Labels,
    min_size: int = 500,
    remove_touching_border: bool = False,
    per_plane: bool = False,
) -> None:
    """Remove small labels and/or labels touching the border, into a new layer."""

    def run() -> str:
        spatial = 2 if per_plane else None
        index = None if per_plane else get_index(labels_layer)
        out, removed = pr.filter_labels(
            labels_layer.data,
            min_size=min_size,
            exclude_border=remove_touching_border,
            spatial_ndim=spatial,
            index=index,
        )
        viewer.add_labels(
            out,
            name=f"{labels_layer.name} filtered",
            scale=labels_layer.scale,
            translate=labels_layer.translate,
        )
        return f"removed {len(removed)} label(s)"

    _report(run)


# --------------------------------------------------------------------------- measure
class MeasureLabels(Container):
    """Per-label measurements in a sortable table; a click on a row jumps to the label."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from qtpy.QtWidgets import QTableWidget

        super().__init__()
        self.viewer = viewer
        self.labels_combo = ComboBox(label="labels", choices=self._layers("Labels"))
        self.image_combo = ComboBox(label="image", choices=self._image_choices, nullable=True)
        self.divisor = SpinBox(label="label divisor", value=0, min=0, max=2**31 - 1)
        self.per_plane = CheckBox(text="per plane (2D+t)", value=False)
        self.measure_button = PushButton(text="Measure")
        self.csv_path = FileEdit(label="CSV", mode="w", filter="*.csv")
        self.export_button = PushButton(text="Export CSV")
        self.summary = Label(value="")
        self.extend(
            [
                self.labels_combo,
                self.image_combo,
                self.divisor,
                self.per_plane,
                self.measure_button,
                self.summary,
                self.csv_path,
                self.export_button,
            ]
        )
        self.table_widget = QTableWidget()
        self.table_widget.setSortingEnabled(True)
        self.table_widget.setEditTriggers(QTableWidget.NoEditTriggers)
        self.native.layout().addWidget(self.table_widget)
        self.table: dict[str, np.ndarray] = {}
        self.measured_layer: Any = None
        self.measure_button.changed.connect(self.measure)
        self.export_button.changed.connect(self.export)
        self.table_widget.cellClicked.connect(self.on_row_clicked)
        viewer.layers.events.inserted.connect(self._refresh_choices)
        viewer.layers.events.removed.connect(self._refresh_choices)

    def _layers(self, kind: str) -> Callable[[Any], list]:
        def choices(_widget: Any = None) -> list:
            return [layer for layer in self.viewer.layers if type(layer).__name__ == kind]

        return choices

    def _image_choices(self, _widget: Any = None) -> list:
        return [(layer.name, layer) for layer in self._layers("Image")()]

    def _refresh_choices(self, _event: Any = None) -> None:
        self.labels_combo.reset_choices()
        self.image_combo.reset_choices()

    def measure(self) -> None:
        """Measure the chosen Labels layer and fill the table and the class summary."""
        layer = self.labels_combo.value
        if layer is None:
            show_error("no Labels layer to measure")
            return
        image = self.image_combo.value
        if image is not None and tuple(image.data.shape) != tuple(layer.data.shape):
            show_error("the image and the labels have different shapes")
            return
        try:
            table = pr.measure_labels(
                layer.data,
                None if image is None else image.data,
                spacing=layer.scale,
                spatial_ndim=2 if self.per_plane.value else None,
                label_divisor=self.divisor.value or None,
            )
        except EmpanadaError as err:
            show_error(str(err))
            return
        self.table, self.measured_layer = table, layer
        self._fill(table)
        counts = pr.class_counts(np.unique(table["label"]), self.divisor.value or None)
        self.summary.value = ", ".join(f"class {c}: {n}" for c, n in counts.items()) or "empty"

    def _fill(self, table: dict[str, np.ndarray]) -> None:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QTableWidgetItem

        keys = list(table)
        n = len(table[keys[0]]) if keys else 0
        widget = self.table_widget
        widget.setSortingEnabled(False)  # filling a sorted table scrambles rows
        widget.clear()
        widget.setColumnCount(len(keys))
        widget.setRowCount(n)
        widget.setHorizontalHeaderLabels(keys)
        for col, key in enumerate(keys):
            for row, value in enumerate(table[key].tolist()):
                item = QTableWidgetItem()
                if isinstance(value, float):
                    value = round(value, 3)
                # Numbers as numbers, so sorting a column is numeric, not alphabetical.
                item.setData(Qt.DisplayRole, value if not isinstance(value, bool) else str(value))
                widget.setItem(row, col, item)
        widget.setSortingEnabled(True)

    def row_label(self, row: int) -> tuple[int, dict[int, int]]:
        """Label id (and the plane, for per-plane tables) shown in a table row."""
        keys = [self.table_widget.horizontalHeaderItem(c).text() for c in range(len(self.table))]
        values = {k: self.table_widget.item(row, c).data(0) for c, k in enumerate(keys)}
        fixed = {int(k.split("-")[1]): int(v) for k, v in values.items() if k.startswith("index-")}
        return int(values["label"]), fixed

    def on_row_clicked(self, row: int, _column: int = 0) -> None:
        """Jump to the label of a clicked row."""
        if self.measured_layer is None:
            return
        label_id, fixed = self.row_label(row)
        try:
            jump_to(self.viewer, self.measured_layer, label_id, fixed or None)
        except EmpanadaError as err:
            show_warning(f"label {label_id}: {err} (measure again after editing)")

    def export(self) -> None:
        """Write the table to the CSV path."""
        if not self.table:
            show_error("measure first: the table is empty")
            return
        path = Path(self.csv_path.value)
        if path.is_dir() or path.suffix.lower() != ".csv":
            show_error("choose a .csv file to export to")
            return
        pr.table_to_csv(self.table, path)
        show_info(f"{len(self.table['label'])} rows written to {path}")
