"""2D Inference (Parameter Testing): segment a slice, the viewport, a Shapes ROI or a whole stack.

The model is loaded once (``load_model`` caches it per file and device) and reused between
clicks, so trying another confidence threshold costs only the inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container

from ..core.errors import InputError
from ._common import (
    NEW_LAYER,
    count_label,
    engine_controls,
    engine_params,
    follow_model_settings,
    image_problem,
    layer_array,
    leading_index,
    place_like,
    split_advanced,
    watch_inputs,
    write_into_labels,
)
from ._jobs import JobPanel
from ._layout import dock
from ._model_fit import ModelFit, model_words, run_model
from ._pickers import LayerPicker, ModelPicker, device_picker, preload_model

if TYPE_CHECKING:
    import napari

REGIONS = ("current slice", "viewport", "shapes ROI", "all slices (batch)")


@dataclass
class _Request:
    """Everything a run needs, read from the widget in the GUI thread."""

    data: Any  # the array to segment: (H, W) crop or (N, H, W) stack
    lead: tuple[int, ...]  # indices of the layer's dims before the segmented ones
    offset: tuple[int, int]  # (y0, x0) of the crop in the plane
    batch: bool
    model: str  # "auto" until the Run knows which model fits best
    device: str
    params: dict[str, Any]


class Inference2DWidget(Container):
    """Dock widget: 2D panoptic inference with every setting of ``InferenceSettings``."""

    user_help = (
        "Segment mitochondria in the current slice, the visible part, a Shapes region or "
        "every slice, to try settings quickly: the model stays loaded between runs. The "
        "result is a new Labels layer (or goes into an existing one, with undo). Under the "
        "model, how well it fits this image; 'auto' picks the model that fits best."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.image = LayerPicker(
            napari_viewer, ("image",), label="image", tooltip="The EM image to segment (greyscale)."
        )
        self.model = ModelPicker(auto=True)
        self.device = device_picker()
        self.fit = ModelFit(napari_viewer, self.image, self.model, self.device, ndim=(2, 3, 4))
        self.region = ComboBox(choices=REGIONS, value=REGIONS[0], label="region")
        self.region.tooltip = (
            "What to segment: the slice on screen, the part of it in view, the rectangle(s) of "
            "a Shapes layer, or every slice of the stack (each on its own)."
        )
        self.roi = LayerPicker(
            napari_viewer,
            ("shapes",),
            label="ROI shapes",
            visible=False,
            tooltip="The Shapes layer whose rectangles (selected ones, else all) bound the ROI.",
        )
        self.output = LayerPicker(
            napari_viewer, ("labels",), extra=((NEW_LAYER, NEW_LAYER),), label="output"
        )
        self.output.tooltip = "A new Labels layer, or an existing one of the image's shape."
        self.controls = engine_controls(per_slice=True)
        for key, control in self.controls.items():
            setattr(self, key, control)
        self.jobs = JobPanel("Run 2D inference", self.run)
        main, advanced = split_advanced(self.controls)
        dock(
            self,
            [self.image, self.model, self.fit, self.region, self.roi, self.output, *main],
            [self.device, *advanced],
            self.jobs,
        )
        self.fit.follow_runs(self.jobs)
        follow_model_settings(self.model, self.controls)
        preload_model(self.model, self.device)
        self.region.changed.connect(self._on_region)
        watch_inputs(self, napari_viewer)

    # -- inputs --------------------------------------------------------------------------

    def _on_region(self, *_: Any) -> None:
        self.roi.visible = self.region.value == "shapes ROI"

    def params(self) -> dict[str, Any]:
        """InferenceSettings fields from the widget."""
        return engine_params(self.controls)

    def problem(self) -> str | None:
        """Why the current inputs cannot run, or None (reads no pixels)."""
        layer = self.image.value
        problem = image_problem(layer)
        if problem:
            return problem
        if not self.model.has_models():
            return "No model registered: add one in the Model Manager."
        if self.viewer.dims.ndisplay == 3 and self.region.value != REGIONS[3]:
            return "Switch the viewer to 2D to segment a slice, the viewport or an ROI."
        data = layer_array(layer)
        if self.region.value == "all slices (batch)" and data.ndim < 3:
            return f"Layer '{layer.name}' is a single 2D image: choose 'current slice'."
        if self.region.value == "shapes ROI":
            shapes = self.roi.value
            if shapes is None:
                return "Draw a rectangle in a Shapes layer to use 'shapes ROI'."
            if len(shapes.data) == 0:
                return f"Shapes layer '{shapes.name}' has no shapes: draw an ROI."
        out = self.output.value
        if out is not None and out != NEW_LAYER:
            if tuple(out.data.shape) != tuple(data.shape):
                return (
                    f"Output layer '{out.name}' has shape {tuple(out.data.shape)}, image "
                    f"'{layer.name}' has {tuple(data.shape)}: choose '{NEW_LAYER}'."
                )
            if np.dtype(out.data.dtype).kind not in "ui":
                return f"Output layer '{out.name}' must hold integer labels."
        return None

    def _plane_box(self, layer: Any) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the region to segment in the layer's current plane."""
        height, width = layer_array(layer).shape[-2:]
        box = (0, height, 0, width)
        if self.region.value == "viewport":
            corners = np.asarray(layer.corner_pixels)[:, -2:]
            if np.all(corners[1] > corners[0]):
                # corner_pixels are inclusive indices of the last visible pixel.
                box = (
                    max(0, int(corners[0, 0])),
                    min(height, int(corners[1, 0]) + 1),
                    max(0, int(corners[0, 1])),
                    min(width, int(corners[1, 1]) + 1),
                )
        elif self.region.value == "shapes ROI":
            box = self._roi_box(layer, height, width)
        return box

    def _roi_box(self, layer: Any, height: int, width: int) -> tuple[int, int, int, int]:
        shapes = self.roi.value
        chosen = sorted(shapes.selected_data) or range(len(shapes.data))
        points = []
        for i in chosen:
            for vertex in np.asarray(shapes.data[i]):
                world = shapes.data_to_world(vertex)
                points.append(layer.world_to_data(world)[-2:])
        pts = np.asarray(points)
        y0, x0 = np.floor(pts.min(axis=0)).astype(int)
        y1, x1 = np.ceil(pts.max(axis=0)).astype(int)
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(height, y1), min(width, x1)
        if y1 - y0 < 2 or x1 - x0 < 2:
            raise InputError("The ROI does not overlap the image: draw it over the image.")
        return y0, y1, x0, x1

    def request(self) -> _Request:
        """Read the job from the widget (GUI thread)."""
        layer = self.image.value
        data = layer_array(layer)
        batch = self.region.value == "all slices (batch)"
        if batch:
            lead = leading_index(self.viewer, layer, keep=3)
            return _Request(
                data[lead], lead, (0, 0), True, self.model.value, self.device.value, self.params()
            )
        lead = leading_index(self.viewer, layer, keep=2)
        y0, y1, x0, x1 = self._plane_box(layer)
        crop = data[(*lead, slice(y0, y1), slice(x0, x1))]
        return _Request(
            crop, lead, (y0, x0), False, self.model.value, self.device.value, self.params()
        )

    # -- running -------------------------------------------------------------------------

    def run(self) -> None:
        """Validate, then segment in a worker thread."""
        problem = self.problem()
        if problem is None:
            try:
                req = self.request()
            except InputError as exc:
                problem = str(exc)
        if self.jobs.refuse(problem):
            return
        layer, target = self.image.value, self.fit.target()

        def job(progress, cancel):
            req.model = run_model(target, req.model)  # "auto": the best model, scored here
            return _segment(req, progress, cancel)

        self.jobs.start(
            job,
            lambda labels: self.fit.note(self._show(layer, req, labels), target, req.model),
            description=f"Segmenting with {model_words(req.model)}",
            compute=True,
        )

    def _show(self, layer: Any, req: _Request, labels: np.ndarray) -> str:
        """Put the result into the chosen output (GUI thread)."""
        from ..core.inference.slices import count_objects

        out = self.output.value
        y0, x0 = req.offset
        objects = count_label(count_objects(labels))
        if out is not None and out != NEW_LAYER and out in self.viewer.layers:
            if req.batch:
                index = (*req.lead, slice(None), slice(None), slice(None))
            else:
                h, w = labels.shape
                index = (*req.lead, slice(y0, y0 + h), slice(x0, x0 + w))
            write_into_labels(out, index, labels)
            out.refresh()
            return f"Wrote {objects} into '{out.name}' (undo: Ctrl+Z)."
        # The result sits where it was computed: a single slice keeps the layer's leading
        # dimensions (length 1, translated to its slice), so it shows on that slice only.
        data = labels if req.batch else labels.reshape((1,) * len(req.lead) + labels.shape)
        offset = (*req.lead, y0, x0) if not req.batch else ()
        where = "stack" if req.batch else ("z" + ",".join(map(str, req.lead)) or "image")
        name = f"{layer.name[:16]} 2D {where}"
        self.viewer.add_labels(
            data,
            name=name,
            metadata={"empanada": _provenance(layer, req)},
            **place_like(layer, data.ndim, offset),
        )
        return f"Added '{name}': {objects}."


def _provenance(layer: Any, req: _Request) -> dict[str, Any]:
    """What made a result layer: image, model, settings, region (kept in layer metadata)."""
    return {
        "image": layer.name,
        "model": req.model,
        "mode": "2d",
        "region": {"lead": list(req.lead), "offset": list(req.offset), "batch": req.batch},
        "settings": dict(req.params),
    }


def _segment(req: _Request, progress, cancel) -> np.ndarray:
    """Worker-thread part: load (or reuse) the model and run the 2D engine."""
    from ..core.inference.engine import Engine2D

    engine = Engine2D(req.model, req.device, **req.params)
    if not req.batch:
        progress(0, 1)
        labels = engine.segment(np.asarray(req.data), cancel=cancel)
        progress(1, 1)
        return labels
    return engine.segment_slices(req.data, progress=progress, cancel=cancel)
