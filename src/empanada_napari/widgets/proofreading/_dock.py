"""What every proofreading dock shares: picking labels with points, the view mode, the dock
layout (labels, picks, controls, Run/Cancel/progress) and running its job in a worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton

from ...core import jobs
from ...core import proofread as pr
from ...core.errors import EmpanadaError, InputError
from ...core.memory import return_free_memory
from .._common import PATCHES_META, notify_error, notify_info, watch_inputs
from .._jobs import JobPanel
from .._layout import dock
from .._pickers import LayerPicker
from ._tracking import LayerJob

if TYPE_CHECKING:
    import napari

PLANE, VOLUME = "current plane", "3D"
MODES = (PLANE, VOLUME)
#: The same defaults in every dock.
DEFAULT_MODE = VOLUME
NO_DIVISOR_TIP = "0: no class scheme (ids are not class * divisor + k)"
MODE_TIP = (
    "3D: the whole object. Current plane: only the plane on screen (for stacks of 2D "
    "results, where each plane has its own objects)."
)

#: A dock's work in the worker: (index, progress, cancel) -> result.
Work = Callable[[pr.LabelIndex, jobs.Progress, jobs.CancelFlag], Any]
#: What the dock does with the result on the GUI thread; returns the status message.
Finish = Callable[[LayerJob, Any], str]


def per_plane(layer: Any) -> bool:
    """Whether ``layer`` holds objects per plane, ids restarting in every slice (MitoNet's
    2D convention): a 2D result of the 2D dock or of ``segment --mode 2d`` (read back from
    zarr), or the patch labels of Pick Training Patches. On such a layer one id names
    unrelated objects in different slices, so every edit stays in the plane pointed at."""
    meta = getattr(layer, "metadata", None) or {}
    made = meta.get("empanada") or {}
    return made.get("mode") == "2d" or PATCHES_META in meta


# --------------------------------------------------------------------------- picking
def fixed_axes(
    viewer: napari.viewer.Viewer, layer: napari.layers.Labels, mode: str
) -> dict[int, int]:
    """Axes of ``layer`` held at the viewer's position: all hidden ones in plane mode, the
    leading ones beyond the last three (time, channel) in 3D mode. Labels made per slice
    (:func:`per_plane`) are always edited in the plane on screen."""
    ndim = layer.ndim
    if per_plane(layer):
        mode = PLANE
    position = np.round(layer.world_to_data(viewer.dims.point)).astype(int)
    position = np.clip(position, 0, np.array(layer.data.shape) - 1)
    offset = viewer.dims.ndim - ndim
    if mode == PLANE:
        axes = [a - offset for a in viewer.dims.not_displayed if a - offset >= 0]
    else:
        axes = list(range(max(0, ndim - 3)))
    return {int(a): int(position[a]) for a in axes}


def view_plane(viewer: napari.viewer.Viewer, layer: napari.layers.Labels) -> dict[int, int] | None:
    """``{axis: index}`` of the plane on screen among the layer's last three axes (None when
    the viewer shows 3D or the layer is 2D)."""
    if viewer.dims.ndisplay != 2 or layer.ndim < 3:
        return None
    position = np.round(layer.world_to_data(viewer.dims.point)).astype(int)
    offset = viewer.dims.ndim - layer.ndim
    hidden = [a - offset for a in viewer.dims.not_displayed if a - offset >= layer.ndim - 3]
    if not hidden:
        return None
    axis = hidden[-1]
    return {axis: int(np.clip(position[axis], 0, layer.data.shape[axis] - 1))}


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
        raise InputError("no Points layer: click 'New points layer', then click on the labels")
    if not coords:
        raise InputError("no pick: add points on the labels (or draw a line through them)")
    coords = np.concatenate(coords)
    values = pr.labels_at(labels.data, coords)
    if shapes is None and (values == 0).any():
        raise InputError(
            f"{int((values == 0).sum())} point(s) on the background (label 0): pick labels"
        )
    return values[values != 0] if shapes is not None else values, coords


def consume_picks(points: Any = None, shapes: Any = None) -> None:
    """Remove the picks an edit used (all points, the lines and paths), so that the next
    edit does not silently act on them again."""
    if points is not None and len(points.data):
        points.data = np.zeros((0, points.ndim))
    if shapes is not None:
        used = {i for i, kind in enumerate(shapes.shape_type) if kind in ("line", "path")}
        if used:
            shapes.selected_data = used
            shapes.remove_selected()


def edit_finish(
    describe: Callable[[pr.Edit], str],
    points: Any = None,
    shapes: Any = None,
    nothing: str = "nothing changed",
) -> Finish:
    """The finish of an edit: write it as one undo step, clear the picks it used, and say
    what it did (``nothing`` when it changed nothing: no undo step, the picks stay)."""

    def finish(session: LayerJob, edit: pr.Edit) -> str:
        if not session.write(edit):
            return nothing
        consume_picks(points, shapes)
        return describe(edit)

    return finish


# --------------------------------------------------------------------------- the dock
class ProofreadDock(Container):
    """Labels picker, picks (a Points layer, with how-to and a "New points layer" button)
    when :attr:`pick_help` is set, the dock's :meth:`controls`, and Run/Cancel/progress.

    A subclass implements :meth:`prepare` (GUI thread: read the picks and the controls,
    return the work for the worker and what to do with its result).
    """

    run_text = "Run"
    description = "Working"
    #: How to pick labels for this dock; None for docks that take no picks.
    pick_help: str | None = None

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.labels_layer = LayerPicker(viewer, ("labels",), label="labels")
        self.labels_layer.tooltip = "The Labels layer to edit."
        head: list[Any] = [self.labels_layer]
        if self.pick_help:
            help_text = Label(value=self.pick_help)
            help_text.native.setWordWrap(True)
            self.points = LayerPicker(viewer, ("points",), label="points")
            self.points.tooltip = "The Points layer whose points pick the labels."
            self.new_points_button = PushButton(text="New points layer")
            self.new_points_button.tooltip = (
                "Add an empty Points layer over the labels, selected and ready to click"
            )
            self.new_points_button.changed.connect(lambda *_: self.new_points_layer())
            head += [help_text, self.points, self.new_points_button]
        self.jobs = JobPanel(self.run_text, self.run)
        dock(self, [*head, *self.controls()], [], self.jobs)  # the plugin's one dock layout
        self.labels_layer.changed.connect(self._layer_chosen)
        self._layer_chosen()
        watch_inputs(self, viewer)

    def _layer_chosen(self, *_: Any) -> None:
        """On labels made per slice, the mode shows what happens: the current plane."""
        layer, mode = self.labels_layer.value, getattr(self, "mode", None)
        if layer is not None and mode is not None and per_plane(layer):
            mode.value = PLANE

    def controls(self) -> list[Any]:
        """The dock's own parameter widgets."""
        return []

    def needs_index(self) -> bool:
        """Whether the work uses the layer's label index (built in the worker if needed)."""
        return True

    def needs_points(self) -> bool:
        """Whether a run needs a Points layer (with the current settings)."""
        return self.pick_help is not None

    def problem(self) -> str | None:
        """Why Run cannot work now (shown in the dock), or None."""
        if self.labels_layer.value is None:
            return "Open or choose a Labels layer."
        if self.pick_help and self.needs_points() and self.points.value is None:
            return "No Points layer: click 'New points layer', then click on the labels."
        return None

    def new_points_layer(self) -> napari.layers.Points:
        """Add an empty Points layer over the chosen labels, select it, ready to click."""
        labels = self.labels_layer.value
        ndim = labels.ndim if labels is not None else max(2, self.viewer.dims.ndim)
        placement = {} if labels is None else {"scale": labels.scale, "translate": labels.translate}
        points = self.viewer.add_points(
            np.zeros((0, ndim)), ndim=ndim, name="picks", face_color="yellow", **placement
        )
        self.points.value = points
        self.viewer.layers.selection.active = points
        points.mode = "add"
        return points

    def prepare(self, layer: napari.layers.Labels) -> tuple[Work, Finish]:
        """Read picks and controls (GUI thread); return the work and its finish."""
        raise NotImplementedError

    def fail(self, message: str) -> None:
        """Show a problem found before the job starts."""
        self.jobs.status.value = message
        notify_error(message)

    def __call__(self) -> None:
        self.run()

    def run(self) -> None:
        """Start this dock's job on the chosen Labels layer (in a worker thread)."""
        layer = self.labels_layer.value
        if layer is None:
            self.fail("no Labels layer: open or choose one")
            return
        if self.jobs.busy:
            return
        try:
            work, finish = self.prepare(layer)
            session = LayerJob(layer)
        except EmpanadaError as err:
            self.fail(str(err))
            return

        use_index = self.needs_index()

        def job(progress: jobs.Progress, cancel: jobs.CancelFlag) -> Any:
            try:
                index = session.index(progress, cancel) if use_index else None
                result = work(index, progress, cancel)
                progress(1, 1)  # a full bar when done, also for work too short to report
                return result
            finally:
                # Here, not on the worker's finished signal: that is queued to the GUI thread
                # after JobPanel's own, so a next run could come first and find the layer busy.
                session.close()

        def done(result: Any) -> str:
            session.adopt()
            try:
                message = finish(session, result)
            finally:
                del result  # the edit's boxes: freed before the heap is trimmed
                return_free_memory()
            notify_info(message)
            return message

        try:
            self.jobs.start(job, done, description=self.description)
        except BaseException:
            session.close()
            raise
