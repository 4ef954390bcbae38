"""3D Inference: stack or ortho-plane segmentation of an Image layer (numpy, dask, multiscale).

The work is done by the core's chunked driver ``segment_volume`` (block by block, optionally
into a zarr array on disk and on a dask scheduler), so volumes larger than memory work. The
controls and their defaults come from the settings classes of ``core/settings.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    SpinBox,
)

from ..core.errors import EmpanadaError, InputError
from ..core.inference.region import box_suffix, box_text
from ._common import (
    count_label,
    engine_controls,
    engine_params,
    follow_model_settings,
    image_problem,
    layer_array,
    leading_index,
    place_like,
    settings_controls,
    settings_values,
    split_advanced,
    watch_inputs,
)
from ._jobs import JobPanel
from ._layout import dock
from ._model_fit import FitTarget, ModelFit, model_words, run_model
from ._pickers import AUTO, LayerPicker, ModelPicker, device_picker, preload_model
from ._region import RegionControls

MODES = ("stack", "ortho")


@dataclass
class _Request:
    volume: Any
    model: str  # "auto" until the Run knows which model fits best
    mode: str
    device: str
    out: Path | None
    out_for: Callable[[str], Path | None]  # the zarr output of a model (its name is in it)
    resume: bool
    overwrite: bool
    scheduler: str | None
    settings: dict[str, Any]  # settings objects by name (inference, stack, ortho, blocks)
    full: Any = None  # the whole volume when ``volume`` is a region of it
    region: tuple[slice, ...] | None = None  # the region of the volume, None: all of it


class Inference3DWidget(Container):
    """Dock widget: 3D instance segmentation with every stack / ortho-plane parameter."""

    user_help = (
        "Segment a whole 3D volume into 3D objects: slice by slice along one axis (stack) "
        "or along all three axes with a vote (ortho-plane, slower, better at boundaries). "
        "Large volumes run block by block, optionally into an OME-Zarr on disk that can "
        "be resumed. Under the model, how well it fits this volume; 'auto' picks the model "
        "that fits best."
    )

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.image = LayerPicker(
            napari_viewer,
            ("image",),
            label="image",
            tooltip="The EM volume to segment (greyscale, 3D).",
        )
        self.model = ModelPicker(auto=True)
        self.device = device_picker()
        self.fit = ModelFit(napari_viewer, self.image, self.model, self.device, ndim=(3, 4, 5))
        from ..core.settings import BlockSettings, OrthoSettings, StackSettings

        self.mode = ComboBox(choices=MODES, value="stack", label="mode")
        self.mode.tooltip = (
            "stack: 2D objects linked slice to slice along one axis; ortho: stacks along xy, "
            "xz and yz, then a vote (needs a volume thick in every direction)."
        )
        self.stack_controls = settings_controls(
            StackSettings,
            ("axis", "median_slices", "min_size", "min_extent", "border_aware", "linking"),
        )
        self.controls = engine_controls(per_slice=False)
        self.ortho_controls = settings_controls(
            OrthoSettings, ("pixel_vote_thr", "cluster_iou_thr", "allow_one_view")
        )
        for group in (self.stack_controls, self.controls, self.ortho_controls):
            for key, control in group.items():
                setattr(self, key, control)
        for control in self.ortho_controls.values():
            control.visible = False
        self.out_dir = FileEdit(mode="d", value="", label="zarr output folder")
        self.chunks = SpinBox(value=0, min=0, max=100000, step=64, label="chunk size (0: auto)")
        self.halo = SpinBox(value=0, min=0, max=10000, label="halo (0: auto)")
        self.resume = CheckBox(value=False, text="resume an interrupted run")
        self.overwrite = CheckBox(value=False, text="overwrite output")
        self.scheduler = LineEdit(value="", label="dask scheduler")
        self.scheduler.tooltip = (
            "Where blocks run: empty for this computer; tcp://host:port for a dask cluster; "
            "local:N to start N worker processes here."
        )
        self.out_dir.tooltip = (
            "Write the result to a zarr store in this folder, block by block (volumes larger "
            "than memory; resumable). Empty: keep it in memory."
        )
        self.chunks.tooltip = BlockSettings.__dataclass_fields__["chunks"].metadata["help"]
        self.halo.tooltip = BlockSettings.__dataclass_fields__["halo"].metadata["help"]
        self.resume.tooltip = "Finish an interrupted run into the same zarr output."
        from ..core.inference.blocks.plan import interactive_memory_gb

        self.memory_gb = FloatSpinBox(
            value=interactive_memory_gb(), min=0.1, max=10**5, step=0.5, label="block memory (GB)"
        )
        self.memory_gb.tooltip = (
            "Working memory one block may use: volumes whose run needs more are cut into "
            "blocks (a little slower: blocks overlap). The default, a sixteenth of this "
            "computer's memory (at least 1 GB), leaves napari and your other layers room; the "
            "command line uses half. A chunk size set below overrides it."
        )
        self.plan = Label(value="")
        self.plan.native.setWordWrap(True)
        self.region = RegionControls(napari_viewer)
        self.overwrite.tooltip = "Replace an existing output (kept until the new one is done)."
        self.jobs = JobPanel("Run 3D inference", self.run)
        engine_main, engine_advanced = split_advanced(self.controls)
        stack_main, stack_advanced = split_advanced(self.stack_controls)
        dock(
            self,
            [
                self.image,
                self.model,
                self.fit,
                self.mode,
                *stack_main,
                *engine_main,
                *self.ortho_controls.values(),
                *self.region.widgets,
                self.out_dir,
                self.memory_gb,
                self.plan,
            ],
            [
                self.device,
                *stack_advanced,
                *engine_advanced,
                self.chunks,
                self.halo,
                self.resume,
                self.overwrite,
                self.scheduler,
            ],
            self.jobs,
        )
        self.mode.changed.connect(self._on_mode)
        self.image.changed.connect(self._fit_region)
        self._fit_region()
        for widget in (self.image, self.mode, self.axis, self.memory_gb, self.chunks,
                       self.region.first, self.region.last, self.region.area):  # fmt: skip
            widget.changed.connect(self._show_plan)
        self._show_plan()
        self.fit.follow_runs(self.jobs)
        follow_model_settings(self.model, self.controls)
        preload_model(self.model, self.device)
        watch_inputs(self, napari_viewer)

    def _on_mode(self, *_: Any) -> None:
        ortho = self.mode.value == "ortho"
        self.axis.visible = not ortho
        for widget in self.ortho_controls.values():
            widget.visible = ortho

    def settings(self) -> dict[str, Any]:
        """The settings objects (inference, stack, ortho, blocks) the widget describes."""
        from ..core.settings import (
            BlockSettings,
            InferenceSettings,
            OrthoSettings,
            StackSettings,
        )

        return {
            "inference": InferenceSettings(**engine_params(self.controls)),
            "stack": StackSettings(**settings_values(StackSettings, self.stack_controls)),
            "ortho": OrthoSettings(**settings_values(OrthoSettings, self.ortho_controls)),
            "blocks": BlockSettings(
                chunks=int(self.chunks.value) or None,
                halo=int(self.halo.value) or None,
                memory_gb=float(self.memory_gb.value),
            ),
        }

    def _out_namer(self) -> Callable[[str], Path | None]:
        """The zarr output of a model as the widget stands now (None: no output folder),
        for "auto" to name once its model is known."""
        folder = str(self.out_dir.value or "").strip()
        if folder in ("", "."):
            return lambda model: None
        layer = self.image.value
        mode = self.mode.value if self.mode.value == "ortho" else f"stack_{self.axis.value}"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer.name)
        region = self._region()
        if region is not None:  # a region is its own result: it never resumes the whole's
            mode = f"{mode}_{box_suffix(region)}"
        return lambda model: Path(folder).expanduser() / f"{safe}_{model}_{mode}.zarr"

    def _volume(self) -> tuple[Any, tuple[int, ...]]:
        """The chosen layer's volume at the viewer's position (a 4D/5D layer's current time
        point) and the leading index it was taken at."""
        layer = self.image.value
        data = layer_array(layer)
        lead = leading_index(self.viewer, layer, keep=3)
        return (data[lead] if lead else data), lead

    def _fit_region(self, *_: Any) -> None:
        """A newly chosen image: its slices, all of them, in the region's range."""
        layer = self.image.value
        if isinstance(layer, napari.layers.Image) and layer_array(layer).ndim >= 3:
            self.region.fit(int(layer_array(layer).shape[-3]))

    def _region(self) -> tuple[slice, ...] | None:
        """The region to segment (None: the whole volume); InputError when it is empty."""
        layer = self.image.value
        return self.region.box(layer, tuple(int(s) for s in layer_array(layer).shape[-3:]))

    def _show_plan(self, *_: Any) -> None:
        """Say under the memory setting how the run will be cut (blocks of what shape)."""
        layer = self.image.value
        if image_problem(layer, ndim=(3, 4, 5)):
            self.plan.value = ""
            return
        try:
            region, shape, chunks = self._blocks()
        except EmpanadaError as exc:
            self.plan.value = str(exc)
            return
        count = 1
        for size, chunk in zip(shape, chunks, strict=True):
            count *= -(-size // chunk)
        where = f"region {box_text(region)}: " if region is not None else ""
        blocks = "one block" if count == 1 else f"{count} blocks of {' x '.join(map(str, chunks))}"
        self.plan.value = where + blocks

    def _blocks(self) -> tuple[Any, tuple[int, ...], tuple[int, int, int]]:
        """(region, its shape, the blocks a run will use): the core's rule (chunk size, halo,
        block memory), so a refusal is said before Run; EmpanadaError says why."""
        from ..core.inference.blocks.plan import blocking

        region = self._region()
        shape = tuple(int(s) for s in layer_array(self.image.value).shape[-3:])
        if region is not None:
            shape = tuple(r.stop - r.start for r in region)
        settings = self.settings()
        chunks, _ = blocking(shape, self.mode.value, settings["stack"], settings["blocks"])
        return region, shape, chunks

    def _out_path(self) -> Path | None:
        # "auto" before its model is known: checked again when the Run knows it.
        return self._out_namer()(self.model.chosen or self.model.value)

    def problem(self) -> str | None:
        """Why the current inputs cannot run, or None (reads no pixels)."""
        layer = self.image.value
        problem = image_problem(layer, ndim=(3, 4, 5))
        if problem:
            if isinstance(layer, napari.layers.Image):
                if layer_array(layer).ndim == 2:
                    return f"Layer '{layer.name}' is 2D: use 2D Inference for single images."
            return problem
        if not self.model.has_models():
            return "No model registered: add one in the Model Manager."
        try:
            self.settings()
        except EmpanadaError as exc:  # the settings' own rule, with the labels on screen
            return _on_screen(exc)
        scheduler = self.scheduler.value.strip()
        if scheduler:
            from ..core.inference.blocks.executor import local_workers

            try:
                local_workers(scheduler)  # the core's check of the address, said as it says it
            except EmpanadaError as exc:
                return f"Dask scheduler: {exc}"
        try:
            self._region()
        except EmpanadaError as exc:
            return f"Region: {exc}"
        try:
            self._blocks()
        except EmpanadaError as exc:  # chunk size, halo: the core's rule, before any work
            return _on_screen(exc)
        out = self._out_path()
        if out is not None:
            if not out.parent.is_dir():
                return f"Output folder {out.parent} does not exist."
            if out.exists() and not (self.resume.value or self.overwrite.value):
                return _exists(out)
        elif self.resume.value or scheduler:
            return "Resume and a dask scheduler need a zarr output folder."
        return None

    def request(self) -> _Request:
        from ..core.inference.region import crop

        volume, _lead = self._volume()
        region = self._region()
        return _Request(
            volume=volume if region is None else crop(volume, region),
            full=volume,
            region=region,
            model=self.model.value,
            mode=self.mode.value,
            device=self.device.value,
            out=self._out_path(),
            out_for=self._out_namer(),
            resume=bool(self.resume.value),
            overwrite=bool(self.overwrite.value),
            scheduler=self.scheduler.value.strip() or None,
            settings=self.settings(),
        )

    def run(self) -> None:
        """Validate, then segment the volume in a worker thread."""
        if self.jobs.refuse(self.problem()):
            return
        layer, target = self.image.value, self.fit.target()
        req = self.request()

        def job(progress, cancel):
            if req.model == AUTO:
                _choose(req, target)
            return segment(req, progress, cancel)

        self.jobs.start(
            job,
            lambda labels: self.fit.note(self._show(layer, req, labels), target, req.model),
            description=f"Segmenting in 3D ({req.mode}) with {model_words(req.model)}",
            compute=True,
        )

    def _show(self, layer: Any, req: _Request, labels: Any) -> str:
        mode = req.mode if req.mode == "ortho" else f"stack {req.settings['stack'].axis}"
        name = f"{layer.name[:16]} 3D {mode}"
        lead = leading_index(self.viewer, layer, keep=3)
        if isinstance(labels, np.ndarray) and lead:
            # A volume of a 4D/5D layer shows at its own time point, not at every one.
            labels = labels.reshape((1,) * len(lead) + labels.shape)
        ndim = labels.ndim if isinstance(labels, np.ndarray) else 3
        corner = tuple(r.start for r in req.region) if req.region else (0, 0, 0)
        offset = (*lead, *corner) if ndim > 3 else corner
        name = f"{name} {req.model}"  # which model made it, as docs/widgets says
        if req.region:
            name = f"{name} {box_suffix(req.region)}"
        provenance = {
            "image": layer.name,
            "model": req.model,
            "mode": req.mode,
            "region": [[r.start, r.stop] for r in req.region] if req.region else None,
            "output": str(req.out) if req.out else None,
            "settings": {k: v.to_dict() for k, v in req.settings.items()},
        }
        placed = place_like(layer, ndim, offset)
        if not isinstance(labels, np.ndarray):
            labels = _editable_store(req.out, placed)
        self.viewer.add_labels(
            labels,
            name=name,
            metadata={"empanada": provenance},
            **placed,
        )
        if req.region:
            _show_region(self.viewer, self.viewer.layers[-1], req.region)
        if isinstance(labels, np.ndarray):  # ids are 1..K; a zarr result is not read back
            return f"Added '{name}': {count_label(int(labels.max(initial=0)))}."
        from ..core.ngff import read_meta

        objects = read_meta(req.out).get("objects")
        found = f": {count_label(int(objects))}" if objects is not None else ""
        return f"Added '{name}'{found} (stored in {req.out})."


def _on_screen(exc: Exception) -> str:
    """A core refusal said with the dock's labels for the settings it names."""
    from ..core.settings import SETTINGS_CLASSES
    from ..core.settings_meta import in_labels

    return in_labels(str(exc), *SETTINGS_CLASSES.values())


def _editable_store(out: Path, placed: dict[str, Any]) -> Any:
    """The zarr result opened for writing, with the image's voxel size recorded in it: the
    proofreading docks edit it in place (with undo), and the plugin's reader gives the scale
    back when it is reopened."""
    from ..core.ngff import open_labels
    from ..core.placement import record_placement

    record_placement(out, placed)
    return open_labels(out, mode="r+")


def _show_region(viewer: napari.viewer.Viewer, result: Any, region: tuple[slice, ...]) -> None:
    """Bring a region's result into view when the slice on screen is outside it."""
    axis = viewer.dims.ndim - 3  # the volume's z in the viewer's dimensions
    if axis < 0 or axis in viewer.dims.displayed:
        return
    first = float(result.translate[-3])
    last = first + (region[0].stop - region[0].start - 1) * float(result.scale[-3])
    if not first <= viewer.dims.point[axis] <= last:
        viewer.dims.set_point(axis, first)


def _exists(out: Path) -> str:
    return f"{out.name} exists in the output folder: tick resume or overwrite."


def _choose(req: _Request, target: FitTarget) -> None:
    """(Compute thread.) Resolve "auto" into the best model, and name its zarr output."""
    req.model = run_model(target, req.model)
    req.out = req.out_for(req.model)
    if req.out is not None and req.out.exists() and not (req.resume or req.overwrite):
        raise InputError(_exists(req.out))


def segment(req: _Request, progress, cancel):
    """Worker-thread part: the core's chunked driver (progress counts slices)."""
    from ..core.inference.chunked import segment_volume

    if req.out is not None and req.region is not None:
        from ..core.output import check_not_input

        check_not_input(req.out, [req.full])  # a lazy region no longer names its file

    return segment_volume(
        req.volume,
        req.model,
        mode=req.mode,
        out=req.out,
        resume=req.resume,
        overwrite=req.overwrite,
        scheduler=req.scheduler,
        device=req.device,
        progress=progress,
        cancel=cancel,
        **req.settings,
    )
