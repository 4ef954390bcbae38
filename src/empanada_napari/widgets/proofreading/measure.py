"""Docks that read whole volumes: filter small or border objects, measure every object."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, FileEdit, Label, PushButton, SpinBox
from napari.utils.notifications import show_warning

from ...core import proofread as pr
from ...core.errors import EmpanadaError
from .._common import notify_info
from .._pickers import LayerPicker
from ._dock import NO_DIVISOR_TIP, ProofreadDock
from .navigate import jump_to

if TYPE_CHECKING:
    import napari

PER_PLANE_TIP = "2D+t: each plane along the leading axes has its own objects"


class FilterLabels(ProofreadDock):
    """Remove small labels and/or labels touching the border, into a new layer."""

    run_text = "Filter"
    description = "Filtering"

    def controls(self) -> list[Any]:
        self.min_size = SpinBox(value=500, min=0, max=2**31 - 1, label="min size (voxels)")
        self.min_size.tooltip = "Labels smaller than this are removed. Default: 500."
        self.remove_touching_border = CheckBox(value=False, text="remove touching border")
        self.remove_touching_border.tooltip = "Also remove labels that touch the image border."
        self.per_plane = CheckBox(value=False, text="per plane", tooltip=PER_PLANE_TIP)
        return [self.min_size, self.remove_touching_border, self.per_plane]

    def needs_index(self) -> bool:
        return not self.per_plane.value

    def prepare(self, layer: napari.layers.Labels):
        settings = {
            "min_size": self.min_size.value,
            "exclude_border": self.remove_touching_border.value,
            "spatial_ndim": 2 if self.per_plane.value else None,
        }

        def work(index, progress, cancel):
            return pr.filter_labels(
                layer.data, index=index, progress=progress, cancel=cancel, **settings
            )

        def finish(_session, result) -> str:
            out, removed = result
            self.viewer.add_labels(
                out, name=f"{layer.name} filtered", scale=layer.scale, translate=layer.translate
            )
            return f"removed {len(removed)} label(s)"

        return work, finish


def _unit(layer: Any, spatial_ndim: int) -> str | None:
    """The layer's physical unit when all its spatial axes share one (None for pixels)."""
    units = getattr(layer, "units", None)
    if not units:
        return None
    names = {f"{u:~}" for u in tuple(units)[-spatial_ndim:]}
    if len(names) != 1:
        return None
    name = names.pop()
    return None if name in ("px", "pixel") else name


class MeasureLabels(ProofreadDock):
    """Per-label measurements in a sortable table; a click on a row jumps to the label."""

    run_text = "Measure"
    description = "Measuring"

    def controls(self) -> list[Any]:
        self.image_combo = LayerPicker(
            self.viewer, ("image",), extra=(("none", None),), label="image"
        )
        self.image_combo.tooltip = "Optional: an image whose mean intensity per label is measured."
        self.divisor = SpinBox(
            label="label divisor", value=0, min=0, max=2**31 - 1, tooltip=NO_DIVISOR_TIP
        )
        self.per_plane = CheckBox(text="per plane (2D+t)", value=False, tooltip=PER_PLANE_TIP)
        return [self.image_combo, self.divisor, self.per_plane]

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from qtpy.QtWidgets import QTableWidget

        super().__init__(viewer)
        self.labels_combo = self.labels_layer
        self.measure_button = self.jobs.run_button
        self.summary = Label(value="")
        self.csv_path = FileEdit(label="CSV", mode="w", filter="*.csv")
        self.export_button = PushButton(text="Export CSV")
        self.extend([self.summary, self.csv_path, self.export_button])
        self.table_widget = QTableWidget()
        self.table_widget.setSortingEnabled(True)
        self.table_widget.setEditTriggers(QTableWidget.NoEditTriggers)
        self.native.layout().addWidget(self.table_widget)
        self.table: dict[str, np.ndarray] = {}
        self.titles: dict[str, str] = {}
        self.measured_layer: Any = None
        self.export_button.changed.connect(self.export)
        self.table_widget.cellClicked.connect(self.on_row_clicked)

    def needs_index(self) -> bool:
        return False

    def prepare(self, layer: napari.layers.Labels):
        image = self.image_combo.value
        if image is not None and tuple(image.data.shape) != tuple(layer.data.shape):
            raise EmpanadaError("the image and the labels have different shapes")
        spatial = 2 if self.per_plane.value else layer.ndim
        divisor = self.divisor.value or None
        settings = {"spacing": layer.scale, "spatial_ndim": spatial, "label_divisor": divisor}

        def work(_index, progress, cancel):
            data = None if image is None else image.data
            return pr.measure_labels(layer.data, data, progress=progress, cancel=cancel, **settings)

        def finish(_session, table: dict[str, np.ndarray]) -> str:
            self.table, self.measured_layer = table, layer
            self.titles = pr.column_titles(table, unit=_unit(layer, spatial))
            self._fill(table)
            counts = pr.class_counts(np.unique(table["label"]), divisor)
            self.summary.value = ", ".join(f"class {c}: {n}" for c, n in counts.items()) or "empty"
            n = len(table["label"])
            return f"measured {n} object{'s' if n != 1 else ''}"

        return work, finish

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
        widget.setHorizontalHeaderLabels([self.titles.get(k, k) for k in keys])
        for col, key in enumerate(keys):
            for row, value in enumerate(table[key].tolist()):
                item = QTableWidgetItem()
                if isinstance(value, float):
                    value = round(value, 3)
                # Numbers as numbers, so sorting a column is numeric, not alphabetical.
                item.setData(Qt.DisplayRole, value if not isinstance(value, bool) else str(value))
                widget.setItem(row, col, item)
        widget.setSortingEnabled(True)

    def row_label(self, row: int) -> tuple[int, dict[int, int], pr.Box]:
        """Label id, the plane (per-plane tables) and the bounding box shown in a row."""
        values = {k: self.table_widget.item(row, c).data(0) for c, k in enumerate(self.table)}
        fixed = {int(k.split("-")[1]): int(v) for k, v in values.items() if k.startswith("index-")}
        axes = sorted(int(k.rsplit("-", 1)[1]) for k in values if k.startswith("bbox-min-"))
        box = tuple(slice(int(values[f"bbox-min-{a}"]), int(values[f"bbox-max-{a}"])) for a in axes)
        return int(values["label"]), fixed, box

    def on_row_clicked(self, row: int, _column: int = 0) -> None:
        """Jump to the label of a clicked row (looked for in its measured box)."""
        if self.measured_layer is None:
            return
        label_id, fixed, box = self.row_label(row)
        try:
            jump_to(self.viewer, self.measured_layer, label_id, fixed or None, box=box)
        except EmpanadaError as err:
            show_warning(f"label {label_id}: {err} (measure again after editing)")

    def export(self) -> None:
        """Write the table to the CSV path, with the column titles shown in the dock."""
        if not self.table:
            self.jobs.refuse("measure first: the table is empty")
            return
        path = Path(self.csv_path.value)
        if path.is_dir() or path.suffix.lower() != ".csv":
            self.jobs.refuse("choose a .csv file to export to")
            return
        try:
            pr.table_to_csv(self.table, path, self.titles)
        except OSError as err:
            self.jobs.refuse(f"cannot write {path}: {err.strerror or err}")
            return
        notify_info(f"{len(self.table['label'])} rows written to {path}")
