"""Export Segmentations: Labels (and optionally Image) layers to tiff stacks, tiff slices or zarr.

Label dtypes are kept exactly (uint32 ids stay uint32); zarr exports carry the layer's name,
scale, translate and units as OME-Zarr metadata so that every OME-Zarr reader restores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Select
from napari.layers import Image, Labels

from ..core.io import export_array, slice_count
from ._common import layer_array
from ._io import safe_name
from ._jobs import JobPanel
from ._layout import dock

if TYPE_CHECKING:
    import napari

#: Display name -> (format key, file suffix).
FORMATS = {
    "tiff stack": ("tiff", ".tif"),
    "tiff per slice": ("tiff-slices", ""),
    "zarr": ("zarr", ".zarr"),
}


class ExportWidget(Container):
    """Dock widget: write the chosen layers into a folder, one file (or folder) per layer."""

    user_help = (
        "Write the chosen layers to files for other tools: labels keep their integer "
        "type; TIFF stacks, one TIFF per slice, or OME-Zarr with the layer's scale and "
        "units."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.include_images = CheckBox(value=False, text="also list image layers")
        self.include_images.tooltip = "Offer Image layers for export too (labels only otherwise)."
        self.layers = Select(choices=self._choices, label="layers")
        self.format = ComboBox(choices=list(FORMATS), value="tiff stack", label="format")
        self.folder = FileEdit(mode="d", value="", label="folder")
        self.overwrite = CheckBox(value=False, text="overwrite existing files")
        self.jobs = JobPanel("Export", self.run)
        self.layers.tooltip = "The layers to write, one file (or folder) per layer."
        self.format.tooltip = (
            "tiff stack: one multi-page TIFF; tiff per slice: a folder of one TIFF per slice; "
            "zarr: OME-Zarr with scale and units, for large volumes and other OME-Zarr readers."
        )
        self.folder.tooltip = "Where to write; files are named after the layers."
        self.overwrite.tooltip = "Replace files of the same name (off: refuse, nothing is lost)."
        dock(
            self,
            [self.include_images, self.layers, self.format, self.folder, self.overwrite],
            [],
            self.jobs,
        )
        self.layers.native.setMinimumHeight(90)
        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh)
        self.include_images.changed.connect(self._refresh)
        self.changed.connect(self._update_state)
        self._refresh()

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        kinds = (Labels, Image) if self.include_images.value else (Labels,)
        return [(ly.name, ly) for ly in self.viewer.layers if isinstance(ly, kinds)]

    def _refresh(self, *_: Any) -> None:
        try:
            before = list(self.layers.value)
            self.layers.reset_choices()
            # Select every Labels layer by default; keep an explicit choice otherwise.
            keep = [ly for ly in before if ly in self.layers.choices]
            labels = [ly for ly in self.layers.choices if isinstance(ly, Labels)]
            self.layers.value = keep or labels
        except RuntimeError:  # Qt widget already deleted
            return
        self._update_state()

    def targets(self) -> list[tuple[Any, Path]]:
        """(layer, output path) for each chosen layer."""
        folder = Path(str(self.folder.value)).expanduser()
        suffix = FORMATS[self.format.value][1]
        return [(ly, folder / f"{safe_name(ly.name)}{suffix}") for ly in self.layers.value]

    def problem(self) -> str | None:
        """Why the export cannot run, or None."""
        if not self.layers.value:
            return "Choose at least one Labels layer to export."
        folder = str(self.folder.value or "").strip()
        if folder in ("", "."):
            return "Choose the folder to export into."
        if not Path(folder).expanduser().is_dir():
            return f"Folder {folder} does not exist."
        for layer in self.layers.value:
            if getattr(layer, "rgb", False):
                return f"Layer '{layer.name}' is RGB; only greyscale images and labels export."
            if any(s == 0 for s in layer_array(layer).shape):
                return f"Layer '{layer.name}' is empty."
        if not self.overwrite.value:
            for _, path in self.targets():
                if path.exists():
                    return f"{path.name} exists in the folder: tick overwrite."
        return None

    def _update_state(self, *_: Any) -> None:
        self.jobs.set_problem(self.problem())

    def run(self) -> None:
        """Validate, then write the layers in a worker thread."""
        if self.jobs.refuse(self.problem()):
            return
        fmt = FORMATS[self.format.value][0]
        overwrite = bool(self.overwrite.value)
        jobs = [
            (
                layer_array(ly),
                path,
                "labels" if isinstance(ly, Labels) else "image",
                ly.name,
                {
                    "scale": list(ly.scale),
                    "translate": list(ly.translate),
                    "units": [str(u) for u in getattr(ly, "units", ())],
                },
            )
            for ly, path in self.targets()
        ]

        def work(progress, cancel) -> list[Path]:
            total = sum(slice_count(data) for data, *_ in jobs)
            done = 0
            written = []
            for data, path, kind, name, meta in jobs:
                base = done
                written.append(
                    export_array(
                        data,
                        path,
                        fmt,
                        kind=kind,
                        name=name,
                        meta=meta,
                        overwrite=overwrite,
                        progress=lambda k, _n, base=base: progress(base + k, total),
                        cancel=cancel,
                    )
                )
                done += slice_count(data)
            return written

        def done(paths: list[Path]) -> str:
            from ._common import notify_info

            message = "Exported " + ", ".join(p.name for p in paths)
            notify_info(message)
            # Disable re-running into the same files, but keep the message on show.
            self.jobs.set_problem(self.problem())
            return message

        self.jobs.start(work, done, description="Exporting")
