"""Save Training Patches: write corrected patches into a dataset folder (appending, with a
manifest of where each patch came from), ready for Finetune Model or Train Model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, LineEdit

from ._common import watch_inputs
from ._io import safe_name
from ._jobs import JobPanel
from ._pickers import LayerPicker
from ._training import dock
from .pick_patches import META

if TYPE_CHECKING:
    import napari


class SavePatchesWidget(Container):
    """Dock widget over :func:`~empanada_napari.core.training.store.save_patches`."""

    user_help = (
        "Save corrected patches as a training dataset folder (images/ and masks/ with a "
        "manifest); saving again appends, never overwrites."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.patches = LayerPicker(napari_viewer, ("image",), label="patches")
        self.patches.tooltip = "The patches layer made by Pick Training Patches."
        self.labels_layer = LayerPicker(napari_viewer, ("labels",), label="corrected labels")
        self.labels_layer.tooltip = "The patch labels, corrected (one object, one id)."
        self.folder = FileEdit(mode="d", label="dataset folder")
        self.folder.tooltip = "an empty folder or an existing dataset: new patches are added"
        self.source = LineEdit(value="", label="group name")
        self.source.tooltip = "sub-folder of the dataset (default: the image layer's name)"
        self.keep_empty = CheckBox(value=False, text="keep patches without objects")
        self.keep_empty.tooltip = "save empty patches on purpose, as background examples"
        self.jobs = JobPanel("Save patches", self.run)
        dock(
            self,
            [self.patches, self.labels_layer, self.folder],
            [self.source, self.keep_empty],
            self.jobs,
        )
        self._prefer_patch_layers()
        napari_viewer.layers.events.inserted.connect(self._prefer_patch_layers)
        watch_inputs(self, napari_viewer)

    def _prefer_patch_layers(self, *_: Any) -> None:
        """Choose the newest layers made by Pick Training Patches."""
        for picker in (self.patches, self.labels_layer):
            made = [c for c in picker.choices if c is not None and META in c.metadata]
            if made:
                picker.value = made[-1]

    def problem(self) -> str | None:
        """Why saving cannot run now, or None."""
        patches, labels = self.patches.value, self.labels_layer.value
        picked = any(META in getattr(layer, "metadata", {}) for layer in self.viewer.layers)
        if patches is None or (not picked and META not in patches.metadata):
            return "Pick patches first with 'Pick Training Patches', then correct and save them."
        if labels is None:
            return "Choose the Labels layer with the corrected patches."
        if tuple(patches.data.shape) != tuple(labels.data.shape):
            return (
                f"'{labels.name}' {tuple(labels.data.shape)} does not match the patches "
                f"'{patches.name}' {tuple(patches.data.shape)}: choose the patch labels that "
                "Pick Training Patches made with them."
            )
        if patches.data.ndim not in (3, 4):
            return f"'{patches.name}' is not a stack of patches (n, [slices,] height, width)."
        folder = str(self.folder.value or "").strip()
        if folder in ("", "."):
            return "Choose the dataset folder to save into."
        return None

    def run(self) -> None:
        """Check and write in a worker."""
        from ..core.training.patches import patch_masks

        if self.jobs.refuse(self.problem()):
            return
        patches, labels = self.patches.value, self.labels_layer.value
        meta = patches.metadata.get(META, {})
        depth = int(meta.get("depth", 1)) if patches.data.ndim == 4 else 1
        images = [np.asarray(patches.data[i]) for i in range(patches.data.shape[0])]
        masks = patch_masks(np.asarray(labels.data), depth)
        infos = meta.get("patches")
        if infos is not None and len(infos) != len(images):
            infos = None  # the stack was edited: coordinates no longer match
        source = self.source.value.strip() or safe_name(meta.get("source", patches.name), "patches")
        folder = Path(str(self.folder.value))
        keep_empty = bool(self.keep_empty.value)
        prefilled_by = str(meta.get("prefilled_by", ""))
        proposal = meta.get("proposal")
        if proposal is not None and tuple(np.shape(proposal)) != tuple(labels.data.shape):
            proposal = None  # not the stack these labels were prefilled for
        proposals = patch_masks(np.asarray(proposal), depth) if proposal is not None else None

        def work(progress, _cancel):
            from ..core.training.effort import correction_effort, describe_effort, total_effort
            from ..core.training.layout import check_dataset, save_patches

            progress(0, 1)
            efforts = None
            if proposals is not None:  # what correcting each patch cost: for the manifest
                efforts = [correction_effort(a, b) for a, b in zip(proposals, masks, strict=True)]
            written = save_patches(
                folder,
                images,
                masks,
                source=source,
                infos=infos,
                prefilled_by=prefilled_by,
                allow_empty=keep_empty,
                efforts=efforts,
            )
            total = len(check_dataset(folder, min_pairs=1).pairs)
            progress(1, 1)
            return written, total, describe_effort(total_effort(efforts)) if efforts else ""

        def done(out) -> str:
            written, total, effort = out
            changed = f" {effort}" if effort else ""
            return (
                f"Saved {len(written)} patches in {folder / source} ({total} in the dataset "
                f"now).{changed} Next: 'Finetune Model' on this folder."
            )

        self.jobs.start(work, done, description="Saving patches")
