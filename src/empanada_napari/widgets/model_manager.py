"""Model Manager: list, download, register, import, export and remove segmentation models.

Every change goes through the shared registry, whose listeners refresh the model pickers of
all the plugin's widgets. Downloading, registering (which checks the model contract with a
short forward pass), importing and exporting run in a worker like every other job.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit, PushButton, Table

from ..core.errors import EmpanadaError
from ..core.jobs import check_cancelled
from ._common import notify_info
from ._jobs import JobPanel
from ._layout import dock
from ._pickers import ModelPicker

if TYPE_CHECKING:
    import napari

#: Widest the dock needs to be (px): napari's canvas keeps the rest of a laptop screen.
MAX_MIN_WIDTH = 400
COLUMNS = ["name", "kind", "file", "description"]


def _buttons(*buttons: PushButton) -> Container:
    return Container(widgets=list(buttons), layout="horizontal", labels=False)


class ModelManagerWidget(Container):
    """Dock widget over :class:`~empanada_napari.core.models.store.ModelRegistry`."""

    user_help = (
        "The models this plugin knows: which are on disk, download one, register your own "
        "(a YAML config and a model file), import or export .empanada archives of the "
        "original plugin, remove user models."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer | None = None) -> None:
        self.viewer = napari_viewer
        self.table = Table(value=[], label="models")
        self.table.tooltip = (
            "Every model: built-in, registered or downloaded; click one to choose it."
        )
        self.selected = ModelPicker(label="selected")
        self.registry = self.selected.registry
        self.details = Label(value="")
        self.details.native.setWordWrap(True)
        self.download_button = PushButton(text="Download")
        self.download_button.tooltip = "Fetch the selected model's file now (it is checked)."
        self.remove_button = PushButton(text="Remove")
        self.remove_button.tooltip = "Remove the selected user model (built-in ones stay)."
        self.export_path = FileEdit(mode="w", filter="*.empanada", label="export to")
        self.export_path.tooltip = "The .empanada archive to write the selected model to."
        self.export_overwrite = CheckBox(value=False, text="replace an existing archive")
        self.export_overwrite.tooltip = "Replace an archive of that name (else it is refused)."
        self.export_button = PushButton(text="Export .empanada")
        self.export_button.tooltip = "Write the selected model and its config as one archive."
        self.new_name = LineEdit(value="", label="new name")
        self.new_name.tooltip = "The name to register the model under."
        self.config = FileEdit(mode="r", filter="*.yaml *.yml", label="config YAML")
        self.config.tooltip = "The model's config (the original plugin's YAML format)."
        self.model_file = LineEdit(value="", label="model file")
        self.model_file.tooltip = "optional: a path or https URL that replaces the config's 'model'"
        self.register_button = PushButton(text="Register")
        self.register_button.tooltip = "Register the config (and model file) under the new name."
        self.archive = FileEdit(mode="r", filter="*.empanada", label="archive")
        self.archive.tooltip = "A .empanada archive (this plugin's or the original's)."
        self.import_name = LineEdit(value="", label="import as")
        self.import_name.tooltip = "optional: a new name (default: the archive's own)"
        self.import_button = PushButton(text="Import .empanada")
        self.import_button.tooltip = "Register the archive's model (checked first)."
        self.jobs = JobPanel("Refresh list", self.refresh)
        # The plugin's one dock layout: scrolls on a laptop screen instead of growing past it.
        dock(
            self,
            [
                self.table,
                self.selected,
                self.details,
                _buttons(self.download_button, self.remove_button),
                self.export_path,
                self.export_overwrite,
                self.export_button,
                Label(value="<b>Register a model</b>"),
                self.new_name,
                self.config,
                self.model_file,
                self.register_button,
                Label(value="<b>Import an archive</b>"),
                self.archive,
                self.import_name,
                self.import_button,
            ],
            [],
            self.jobs,
        )
        self._setup_table()
        self.selected.changed.connect(self._show_selected)
        self.download_button.changed.connect(lambda *_: self.download_model())
        self.remove_button.changed.connect(lambda *_: self.remove_model())
        self.export_button.changed.connect(lambda *_: self.export_model())
        self.register_button.changed.connect(lambda *_: self.register_model())
        self.import_button.changed.connect(lambda *_: self.import_archive())
        # The picker hears the registry; the table follows the picker.
        self.selected._watcher.changed.connect(self.refresh)
        self.refresh()

    def _setup_table(self) -> None:
        from qtpy.QtWidgets import QAbstractItemView, QSizePolicy

        native = self.table.native
        native.setMinimumHeight(120)
        native.setMinimumWidth(0)  # long descriptions scroll instead of widening the dock
        native.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        native.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        native.itemSelectionChanged.connect(self._row_selected)
        self.table.read_only = True
        # Word-wrapped labels would otherwise ask for the width of their whole text (a long
        # description or error message made the dock 600 px wide and squeezed the canvas);
        # Expanding makes them take the dock's width instead of wrapping into a tall column.
        for label in (self.details, self.jobs.status):
            label.native.setMinimumWidth(1)
            label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    # -- display ---------------------------------------------------------------------------

    def rows(self) -> list[dict[str, str]]:
        """One row per model: name, kind, where its file is, and description."""
        return [
            {
                "name": e.name,
                "kind": "built-in" if e.builtin else "user",
                "file": self.registry.file_status(e),
                "description": e.description,
            }
            for e in self.registry.entries()
        ]

    def refresh(self) -> None:
        """Re-read the registry into the table."""
        rows = self.rows()
        self._names = [r["name"] for r in rows]
        self.table.value = {
            "data": [[r[c] for c in COLUMNS] for r in rows],
            "index": [str(i + 1) for i in range(len(rows))],
            "columns": COLUMNS,
        }
        native = self.table.native
        native.resizeColumnsToContents()
        native.setColumnWidth(3, min(native.columnWidth(3), 400))
        self._show_selected()

    def _row_selected(self) -> None:
        rows = {index.row() for index in self.table.native.selectedIndexes()}
        if len(rows) == 1:
            name = self._names[rows.pop()]
            if name in self.selected.choices and self.selected.value != name:
                self.selected.value = name

    def _select_row(self, name: str | None) -> None:
        native = self.table.native
        if name not in self._names:
            native.clearSelection()
            return
        row = self._names.index(name)
        if {i.row() for i in native.selectedIndexes()} != {row}:
            native.selectRow(row)

    def _show_selected(self, *_: Any) -> None:
        name = self.selected.value
        self._select_row(name)
        if name is None:
            self.details.value = ""
            self.remove_button.enabled = self.download_button.enabled = False
            return
        try:
            entry = self.registry.get(name)
            status = self.registry.file_status(entry)
            where = self.registry.local_file(entry) or entry.model_source
        except EmpanadaError as exc:
            self.details.value = f"Cannot read this model: {exc}"
            self.remove_button.enabled, self.download_button.enabled = True, False
            return
        kind = "built-in (cannot be removed)" if entry.builtin else "user model"
        # The first sentence only: the whole description would make a narrow dock very tall.
        self.details.value = f"{kind}; file: {status}\n{entry.summary}"
        self.details.tooltip = f"{entry.description}\n\nfile: {where}"
        self.remove_button.enabled = not entry.builtin
        self.remove_button.tooltip = "built-in models cannot be removed" if entry.builtin else ""
        needs = status.startswith("download")
        self.download_button.enabled = needs
        size = entry.size_mb()
        self.download_button.text = f"Download (~{size:.0f} MB)" if needs and size else "Download"
        self.download_button.tooltip = (
            f"download {entry.model_source} into {self.registry.models_dir}"
            if needs
            else "the model file is on this computer"
        )

    # -- actions ---------------------------------------------------------------------------

    def download_model(self) -> None:
        """Download the selected model's file into the cache (in a worker, with progress)."""
        name = self.selected.value
        if name is None:
            self.jobs.refuse("No model selected.")
            return
        registry = self.registry

        def work(progress, cancel):
            def in_kb(done: int, total: int) -> None:
                check_cancelled(cancel, f"Download of {name} cancelled.")
                progress(done // 1024, total // 1024)

            return registry.fetch(name, progress=in_kb)

        def done(path: Path) -> str:
            self.refresh()
            notify_info(f"Downloaded {name} to {path}.")
            return f"Downloaded {name}."

        self.jobs.start(work, done, description=f"Downloading {name}")

    def remove_model(self) -> None:
        """Remove the selected user model (built-in ones are refused)."""
        name = self.selected.value
        if name is None:
            self.jobs.refuse("No model selected.")
            return
        try:
            self.registry.remove(name)
        except EmpanadaError as exc:
            self.jobs.refuse(str(exc))
            return
        notify_info(f"Removed model {name!r}.")

    def export_model(self) -> None:
        """Write the selected model to a ``.empanada`` archive (in a worker)."""
        name = self.selected.value
        dest = str(self.export_path.value or "").strip()
        if name is None or dest in ("", "."):
            self.jobs.refuse("Choose a model and an archive path to export to.")
            return
        registry = self.registry
        overwrite = self.export_overwrite.value

        def work(progress, _cancel):
            progress(0, 1)
            path = registry.export_archive(name, Path(dest), overwrite=overwrite)
            progress(1, 1)
            return path

        self.jobs.start(
            work, lambda path: notify_info(f"Exported {name} to {path}"), description="Exporting"
        )

    def register_model(self) -> None:
        """Register a model from the YAML config (and optional model file / URL)."""
        name = self.new_name.value.strip()
        config = str(self.config.value or "").strip()
        model = self.model_file.value.strip() or None
        if not name:
            self.jobs.refuse("Give the new model a name.")
            return
        if config in ("", ".") or not Path(config).is_file():
            self.jobs.refuse("Choose the model's config YAML file.")
            return
        registry = self.registry

        def work(progress, _cancel):
            progress(0, 1)
            entry = registry.register(name, Path(config), model)
            progress(1, 1)
            return entry

        self.jobs.start(
            work,
            lambda entry: self._registered(entry.name),
            description=f"Registering {name}",
        )

    def _free_name(self, name: str) -> str:
        k = 2
        while f"{name}_{k}" in self.registry:
            k += 1
        return f"{name}_{k}"

    def import_archive(self) -> None:
        """Register the model inside a ``.empanada`` archive; ask for a new name if taken."""
        from ..core.models import archive_model_name

        archive = str(self.archive.value or "").strip()
        if archive in ("", ".") or not Path(archive).is_file():
            self.jobs.refuse("Choose a .empanada archive to import.")
            return
        try:
            name = self.import_name.value.strip() or archive_model_name(archive)
        except EmpanadaError as exc:
            self.jobs.refuse(str(exc))
            return
        if name in self.registry:
            suggestion = self._free_name(name)
            self.import_name.value = suggestion
            self.import_name.native.setFocus()
            message = (
                f"A model named '{name}' exists. Import this one as '{suggestion}' (or type "
                "another name under 'import as') and press Import again."
            )
            self.jobs.status.value = message
            notify_info(message)
            return
        registry = self.registry

        def work(progress, _cancel):
            progress(0, 1)
            entry = registry.import_archive(Path(archive), name=name)
            progress(1, 1)
            return entry

        def done(entry) -> None:
            self.import_name.value = ""
            self._registered(entry.name)

        self.jobs.start(work, done, description="Importing")

    def _registered(self, name: str) -> None:
        self.selected.refresh()
        self.selected.value = name
        notify_info(f"Registered model {name!r}.")
