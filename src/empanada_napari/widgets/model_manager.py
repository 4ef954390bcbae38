"""Model Manager: list, register, import, export and remove segmentation models.

Every change goes through the shared registry, whose listeners refresh the model pickers of
all the plugin's widgets. Registering or importing checks the TorchScript file (a second or
two), so those actions run in a worker like every other job.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, FileEdit, Label, LineEdit, PushButton, Table

from ..core.errors import InputError
from ._common import JobPanel, ModelPicker, notify_error, notify_info

if TYPE_CHECKING:
    import napari


class ModelManagerWidget(Container):
    """Dock widget over :class:`~empanada_napari.core.models.registry.ModelRegistry`."""

    def __init__(self, napari_viewer: napari.viewer.Viewer | None = None) -> None:
        self.viewer = napari_viewer
        self.table = Table(value=[], label="models")
        self.selected = ModelPicker(label="selected")
        self.registry = self.selected.registry
        self.details = Label(value="")
        self.details.native.setWordWrap(True)
        self.remove_button = PushButton(text="Remove")
        self.export_path = FileEdit(mode="w", filter="*.empanada", label="export to")
        self.export_button = PushButton(text="Export .empanada")
        self.new_name = LineEdit(value="", label="new name")
        self.config = FileEdit(mode="r", filter="*.yaml *.yml", label="config YAML")
        self.model_file = LineEdit(value="", label="model file or URL")
        self.model_file.tooltip = "optional: overrides the config's 'model' (path or https URL)"
        self.register_button = PushButton(text="Register")
        self.archive = FileEdit(mode="r", filter="*.empanada", label="archive")
        self.import_button = PushButton(text="Import .empanada")
        self.jobs = JobPanel("Refresh list", self.refresh)
        super().__init__(
            widgets=[
                self.table,
                self.selected,
                self.details,
                Container(
                    widgets=[self.remove_button, self.export_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.export_path,
                Label(value="<b>Register a model</b>"),
                self.new_name,
                self.config,
                self.model_file,
                self.register_button,
                Label(value="<b>Import an archive</b>"),
                self.archive,
                self.import_button,
                self.jobs,
            ]
        )
        self.table.native.setMinimumHeight(120)
        self.table.read_only = True
        self.selected.changed.connect(self._show_selected)
        self.remove_button.changed.connect(lambda *_: self.remove_model())
        self.export_button.changed.connect(lambda *_: self.export_model())
        self.register_button.changed.connect(lambda *_: self.register_model())
        self.import_button.changed.connect(lambda *_: self.import_archive())
        # The picker hears the registry; the table follows the picker.
        self.selected._watcher.changed.connect(self.refresh)
        self.refresh()

    # -- display ---------------------------------------------------------------------------

    def rows(self) -> list[dict[str, str]]:
        """One row per model: name, kind and description."""
        return [
            {
                "name": e.name,
                "kind": "built-in" if e.builtin else "user",
                "description": e.description,
            }
            for e in self.registry.entries()
        ]

    def refresh(self) -> None:
        """Re-read the registry into the table."""
        rows = self.rows()
        self.table.value = {
            "data": [[r["name"], r["kind"], r["description"]] for r in rows],
            "index": [str(i + 1) for i in range(len(rows))],
            "columns": ["name", "kind", "description"],
        }
        self.table.native.resizeColumnsToContents()
        self._show_selected()

    def _show_selected(self, *_: Any) -> None:
        name = self.selected.value
        if name is None:
            self.details.value = ""
            self.remove_button.enabled = False
            return
        entry = self.registry.get(name)
        source = entry.config.get("model", "")
        kind = "built-in (cannot be removed)" if entry.builtin else "user model"
        self.details.value = f"{kind}; file: {source}\n{entry.description}"
        self.remove_button.enabled = not entry.builtin
        self.remove_button.tooltip = "built-in models cannot be removed" if entry.builtin else ""

    # -- actions ---------------------------------------------------------------------------

    def remove_model(self) -> None:
        """Remove the selected user model (built-in ones are refused)."""
        name = self.selected.value
        if name is None:
            notify_error("No model selected.")
            return
        if self.registry.get(name).builtin:
            notify_error(f"{name!r} is a built-in model and cannot be removed.")
            return
        try:
            self.registry.remove(name)
        except InputError as exc:
            notify_error(str(exc))
            return
        notify_info(f"Removed model {name!r}.")

    def export_model(self) -> None:
        """Write the selected model to a ``.empanada`` archive (in a worker)."""
        name = self.selected.value
        dest = str(self.export_path.value or "").strip()
        if name is None or dest in ("", "."):
            notify_error("Choose a model and an archive path to export to.")
            return
        registry = self.registry

        def work(progress, _cancel):
            progress(0, 1)
            path = registry.export_archive(name, Path(dest))
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
            notify_error("Give the new model a name.")
            return
        if config in ("", ".") or not Path(config).is_file():
            notify_error("Choose the model's config YAML file.")
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

    def import_archive(self) -> None:
        """Register the model inside a ``.empanada`` archive."""
        archive = str(self.archive.value or "").strip()
        if archive in ("", ".") or not Path(archive).is_file():
            notify_error("Choose a .empanada archive to import.")
            return
        registry = self.registry

        def work(progress, _cancel):
            progress(0, 1)
            entry = registry.import_archive(Path(archive))
            progress(1, 1)
            return entry

        self.jobs.start(work, lambda entry: self._registered(entry.name), description="Importing")

    def _registered(self, name: str) -> None:
        self.selected.refresh()
        self.selected.value = name
        notify_info(f"Registered model {name!r}.")
