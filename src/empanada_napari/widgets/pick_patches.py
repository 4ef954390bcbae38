"""Pick Training Patches: cut patches from an image (random, at points, or where the model
doubts most), prefilled with the model's prediction, as two new layers to correct.

The patches image layer and the labels layer carry ``metadata["empanada_patches"]``: the
source layer, the model that prefilled the labels, the flipbook depth and each patch's
coordinates, which Save Training Patches writes into the dataset's manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, SpinBox

from ..core.errors import EmpanadaError
from ._common import PATCHES_META, image_problem, layer_array, watch_inputs
from ._jobs import JobPanel
from ._patch_nav import PatchNavigator, outlines
from ._pickers import LayerPicker, ModelPicker, device_picker
from ._training import dock

if TYPE_CHECKING:
    import napari

STRATEGIES = {
    "most uncertain (model's doubt)": "uncertain",
    "random": "random",
    "at points (Points layer)": "points",
}
PREFILLS = {
    "model prediction": "model",
    "labels layer": "labels",
    "empty": "none",
}
AXES = {"z (slices of the stack)": 0, "y": 1, "x": 2}
META = PATCHES_META


class PickPatchesWidget(Container):
    """Dock widget over :func:`~empanada_napari.core.training.patches.pick_patches`."""

    user_help = (
        "Pick patches to correct from an image: at random, around the points of a Points "
        "layer, or where the model is least sure. Adds the patches as an image layer and "
        "a labels layer prefilled with the model's prediction, ready to fix with napari's "
        "brush, eraser and fill."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.image = LayerPicker(napari_viewer, ("image",), label="image")
        self.image.tooltip = "The EM image (2D or a stack) to cut patches from."
        self.strategy = ComboBox(choices=list(STRATEGIES), label="pick")
        self.strategy.tooltip = (
            "most uncertain: the model segments the image and the patches where it hesitates "
            "most (probability near the threshold, weak or touching centres, objects that do "
            "not continue into the next slice, pixels its flipped views disagree on) come "
            "first, so your corrections count most"
        )
        self.points = LayerPicker(napari_viewer, ("points",), label="points", visible=False)
        self.points.tooltip = "The Points layer: one patch is centred on each point."
        self.number = SpinBox(value=16, min=1, max=1000, label="patches")
        self.number.tooltip = "How many patches to pick. Default: 16."
        self.patch_size = SpinBox(value=256, min=32, max=2048, step=32, label="patch size")
        self.patch_size.tooltip = "Side of each patch in pixels. Default: 256."
        self.prefill = ComboBox(choices=list(PREFILLS), label="prefill labels with")
        self.prefill.tooltip = (
            "What the patch labels start from: the model's prediction (correct, not paint), "
            "an existing Labels layer, or nothing"
        )
        self.labels_layer = LayerPicker(napari_viewer, ("labels",), label="labels", visible=False)
        self.labels_layer.tooltip = "The Labels layer (of the image's shape) to prefill from."
        self.model = ModelPicker()
        self.device = device_picker()
        self.depth = SpinBox(value=1, min=1, max=15, step=2, label="flipbook slices")
        self.depth.tooltip = "1: 2D patches; 3, 5...: that many consecutive slices per patch"
        self.axis = ComboBox(choices=list(AXES), label="slices along")
        self.axis.tooltip = "The axis patches are sliced along (z: the stack's own slices)."
        self.seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed (random)")
        self.seed.tooltip = "Random seed of random picking: the same seed picks the same places."
        self.max_planes = SpinBox(value=32, min=1, max=1000, label="slices scored (uncertain)")
        self.max_planes.tooltip = (
            "Most uncertain: how many evenly spaced slices the model scores. Default: 32."
        )
        self.confidence = ComboBox(
            choices=[0.3, 0.4, 0.5, 0.6, 0.7], value=0.5, label="confidence (uncertain)"
        )
        self.confidence.tooltip = (
            "Most uncertain: the probability threshold the doubt is measured around. Default: 0.5."
        )
        self.first_slice = SpinBox(value=0, min=0, max=100000, label="from slice")
        self.first_slice.tooltip = "pick only from this slice on (keep other slices to check)"
        self.last_slice = SpinBox(value=100000, min=0, max=100000, label="to slice")
        self.last_slice.tooltip = "pick only up to this slice (included)"
        self.current_slice = CheckBox(value=False, text="current slice only")
        self.current_slice.tooltip = "pick only from the slice on screen"
        self.skip_saved = FileEdit(mode="d", label="skip places saved in")
        self.skip_saved.tooltip = (
            "a dataset folder (Save Training Patches): places already picked from this image "
            "and saved there are never picked again (the next round of the loop)"
        )
        self.navigator = PatchNavigator(napari_viewer)
        self.jobs = JobPanel("Pick patches", self.run)
        dock(
            self,
            [
                self.image,
                self.strategy,
                self.points,
                self.number,
                self.patch_size,
                self.prefill,
                self.labels_layer,
                self.model,
                self.current_slice,
                self.skip_saved,
            ],
            [
                self.first_slice,
                self.last_slice,
                self.device,
                self.depth,
                self.axis,
                self.seed,
                self.max_planes,
                self.confidence,
            ],
            self.jobs,
            extra=[self.navigator.panel],
        )
        self.strategy.changed.connect(self._visibility)
        self.prefill.changed.connect(self._visibility)
        self._visibility()
        watch_inputs(self, napari_viewer)

    def _visibility(self, *_: Any) -> None:
        self.points.visible = STRATEGIES[self.strategy.value] == "points"
        self.number.visible = not self.points.visible
        self.labels_layer.visible = PREFILLS[self.prefill.value] == "labels"

    def problem(self) -> str | None:
        """Why picking cannot run now, or None (reads no pixels)."""
        layer = self.image.value
        problem = image_problem(layer, ndim=(2, 3))
        if problem:
            return problem
        strategy = STRATEGIES[self.strategy.value]
        if strategy == "points":
            pts = self.points.value
            if pts is None:
                return "Add a Points layer and click the places to pick patches at."
            if len(pts.data) == 0:
                return f"Points layer '{pts.name}' has no points: click where patches go."
        prefill = PREFILLS[self.prefill.value]
        if prefill == "labels":
            labels = self.labels_layer.value
            if labels is None:
                return "Choose the Labels layer to prefill from."
            if tuple(labels.data.shape) != tuple(layer_array(layer).shape):
                return (
                    f"Labels '{labels.name}' {tuple(labels.data.shape)} and image "
                    f"'{layer.name}' {tuple(layer_array(layer).shape)} differ in shape."
                )
        if (strategy == "uncertain" or prefill == "model") and self.model.value is None:
            return "No model registered: add one in the Model Manager."
        data = layer_array(layer)
        depth = int(self.depth.value)
        if depth > 1 and data.ndim == 3 and data.shape[AXES[self.axis.value]] < depth:
            return f"Flipbooks of {depth} slices need at least {depth} slices."
        if data.ndim == 3 and not self.current_slice.value:
            n = data.shape[AXES[self.axis.value]]
            if self.first_slice.value >= n or self.first_slice.value > self.last_slice.value:
                return (
                    f"'from slice' {self.first_slice.value} to 'to slice' "
                    f"{self.last_slice.value}: choose slices within 0-{n - 1}."
                )
        return None

    def _planes(self, layer) -> tuple[int, int] | None:
        """The slice range to pick from: the slice on screen, or from/to (None: all)."""
        data = layer_array(layer)
        if data.ndim != 3:
            return None
        n = data.shape[AXES[self.axis.value]]
        if self.current_slice.value:
            here = int(np.round(layer.world_to_data(self.viewer.dims.point)[AXES[self.axis.value]]))
            here = int(np.clip(here, 0, n - 1))
            return here, here + 1
        first, last = int(self.first_slice.value), min(int(self.last_slice.value), n - 1)
        return None if (first, last) == (0, n - 1) else (first, last + 1)

    def _saved_places(self, layer) -> list[dict]:
        folder = str(self.skip_saved.value or "").strip()
        if folder in ("", "."):
            return []
        from ..core.training.manifest import picked_places

        return picked_places(folder, layer.name)

    def _points(self, layer) -> np.ndarray | None:
        pts = self.points.value
        if pts is None:
            return None
        world = [pts.data_to_world(p) for p in np.asarray(pts.data)]
        return np.asarray([layer.world_to_data(w)[-layer.ndim :] for w in world])

    def run(self) -> None:
        """Pick in a worker; add the patches and their labels as layers."""
        if self.jobs.refuse(self.problem()):
            return
        layer = self.image.value
        strategy = STRATEGIES[self.strategy.value]
        prefill = PREFILLS[self.prefill.value]
        kwargs = {
            "n": int(self.number.value),
            "patch_size": int(self.patch_size.value),
            "strategy": strategy,
            "points": self._points(layer) if strategy == "points" else None,
            "depth": int(self.depth.value),
            "axis": AXES[self.axis.value],
            "prefill": prefill,
            "labels": layer_array(self.labels_layer.value) if prefill == "labels" else None,
            "model": self.model.value,
            "device": self.device.value,
            "engine_params": {"confidence_thr": float(self.confidence.value)},
            "max_planes": int(self.max_planes.value),
            "source": layer.name,
            "seed": int(self.seed.value),
            "planes": self._planes(layer),
        }
        try:
            kwargs["exclude"] = self._saved_places(layer)
        except EmpanadaError as err:
            self.jobs.refuse(str(err))
            return
        data = layer_array(layer)

        def work(progress, cancel):
            from ..core.training.patches import pick_patches

            return pick_patches(data, progress=progress, cancel=cancel, **kwargs)

        by = (
            self.model.value
            if prefill == "model"
            else (self.labels_layer.value.name if prefill == "labels" else "")
        )
        self.jobs.start(
            work,
            lambda patches: self._show(layer, patches, by),
            description=f"Picking {strategy} patches",
            compute=True,
        )

    def _show(self, layer, patches, prefilled_by: str) -> str:
        from ..core.training.patches import stack_patches

        if not patches:
            return "No patch could be picked (the image is smaller than a patch?)."
        images, labels = stack_patches(patches)
        depth = patches[0].image.shape[0] if patches[0].image.ndim == 3 else 1
        infos = [p.info() for p in patches]
        meta = {
            META: {
                "source": layer.name,
                "prefilled_by": prefilled_by,
                "depth": depth,
                "patches": infos,
                # The prefill as proposed: Save counts the objects the user changed from it.
                "proposal": labels.copy(),
            }
        }
        name = f"{layer.name} patches"
        added = [
            self.viewer.add_image(images, name=name, metadata=meta, contrast_limits=_limits(layer)),
            self.viewer.add_labels(labels, name=f"{layer.name} patch labels", metadata=meta),
        ]
        boxes = outlines(infos, layer_array(layer).ndim)
        if boxes:  # where the patches were cut, on the source image
            # Added last, so drawn above the patch layers: the outline and number of the
            # patch on screen stay visible (the number in its corner, off the labels).
            self.viewer.add_shapes(
                boxes,
                shape_type="rectangle",
                name=f"{layer.name} picked places",
                edge_color="yellow",
                face_color="transparent",
                edge_width=2,
                scale=layer.scale,
                translate=layer.translate,
                text={
                    "string": [str(k) for k in range(len(boxes))],
                    "color": "yellow",
                    "anchor": "upper_left",
                },
            )
        self.navigator.show(layer, added, infos)
        where = " (middle slice of each flipbook)" if depth > 1 else ""
        return (
            f"Added {len(patches)} patches, shown where they were cut (Previous / Next, or "
            f"click a row). Correct their labels{where} with Click to Add, napari's brush, "
            "eraser and fill, then save them with 'Save Training Patches'."
        )


def _limits(layer) -> tuple[float, float] | None:
    limits = getattr(layer, "contrast_limits", None)
    return tuple(limits) if limits is not None else None
