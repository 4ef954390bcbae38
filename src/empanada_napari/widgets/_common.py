"""Plumbing shared by the dock widgets: jobs in threads, settings controls, layer helpers,
notifications (the pickers are in :mod:`._pickers`).

Kept free of torch at import time (napari loads the plugin's widget modules when it builds its
menus); torch comes in with the first job.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from ..core.errors import Cancelled, EmpanadaError
from ..core.settings import SETTINGS_CLASSES, setting_fields, tooltip, widget_label

logger = logging.getLogger(__name__)

#: Label of the "make a new layer" entry of output pickers.
NEW_LAYER = "New Labels layer"
#: Layer metadata key of the patches of Pick Training Patches (read by Save and the
#: proofreading docks: patch labels are edited one patch, a plane, at a time).
PATCHES_META = "empanada_patches"


#: napari shows a notification as one elided line (about this many characters at 1366 px),
#: and clips the underscores of a path in it; longer messages are shortened there and shown
#: whole, wrapped and selectable, in the dock's status line.
NOTIFICATION_CHARS = 70


def short_message(message: str, limit: int = NOTIFICATION_CHARS) -> str:
    """``message`` as a notification shows it whole: itself when short, else its start cut
    at a word, with a pointer to the dock where the whole text stands."""
    message = " ".join(str(message).split())
    if len(message) <= limit:
        return message
    cut = message[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut}... (the dock says more)"


def notify_error(message: str) -> None:
    """Show a user-caused problem as a napari error notification (no traceback); the caller
    shows the whole message in its dock."""
    show_error(short_message(message))


def notify_info(message: str) -> None:
    show_info(short_message(message))


# --------------------------------------------------------------------------- jobs


class _Failure:
    """What a job returns instead of raising, so that every error becomes a notification."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.cancelled = isinstance(exc, Cancelled)

    @property
    def message(self) -> str:
        # Core errors carry a user-readable reason; anything else is a bug: name its type.
        if isinstance(self.exc, EmpanadaError):
            return str(self.exc)
        if isinstance(self.exc, MemoryError):
            return "Out of memory: try a smaller region, downsampling or a zarr output."
        return f"{type(self.exc).__name__}: {self.exc}"


JobFunction = Callable[[Callable[[int, int], None], threading.Event], Any]


#: Jobs still running after this many seconds also show in napari's activity dock.
ACTIVITY_AFTER_S = 3.0

#: Height of the Run/Cancel buttons: fixed, so they do not shrink while a job runs.
BUTTON_HEIGHT = 28


_COMPUTE: list[Any] = []  # the plugin's compute thread (an executor), made on first use
_COMPUTE_LOCK = threading.Lock()
_compute_jobs = 0  # jobs submitted to it and not finished (read by the docks for "waiting")


def compute_executor():
    """The one thread that runs every job using a model (and the docks' model preloading).

    Once two live threads have run torch's parallel code, the OpenMP runtime of the Linux
    wheels (libgomp) counts more threads than cores and stops its idle workers spinning
    between operations; every forward pass then took 1.3x longer (docs/benchmarks.md).
    napari's worker threads come and go, so model work is handed to this thread and the
    worker waits for it. Jobs that use a model therefore run one after another."""
    with _COMPUTE_LOCK:
        if not _COMPUTE:
            from concurrent.futures import ThreadPoolExecutor

            _COMPUTE.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="empanada"))
        return _COMPUTE[0]


def in_compute_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` in :func:`compute_executor`'s thread and wait for its result."""
    global _compute_jobs
    with _COMPUTE_LOCK:
        _compute_jobs += 1
    try:
        return compute_executor().submit(fn).result()
    finally:
        with _COMPUTE_LOCK:
            _compute_jobs -= 1


def compute_busy() -> bool:
    """True while a job that uses a model runs or waits (a new one would wait for it)."""
    return _compute_jobs > 0


class JobPanel(Container):
    """Run button, Cancel button, determinate progress bar, a status line and, whenever Run
    is disabled, the reason in words.

    :meth:`start` runs ``job(progress, cancel)`` in a napari ``thread_worker``: ``progress``
    (``core.jobs``'s shape) may be called from the worker thread and shows in the dock and,
    once the job has run :data:`ACTIVITY_AFTER_S`, in napari's activity dock; ``cancel`` is
    the Event the Cancel button sets (the core checks it between slices, views or blocks and
    raises ``Cancelled``). The result goes to ``on_done``
    in the GUI thread (a string it returns becomes the status line), never after Cancel;
    errors become notifications with their reason.
    """

    def __init__(self, run_text: str, on_run: Callable[[], None]) -> None:
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        for button in (self.run_button, self.cancel_button):
            button.native.setFixedHeight(BUTTON_HEIGHT)
        self.run_tip = f"{run_text} with the choices above"
        self.run_button.tooltip = self.run_tip
        self.cancel_button.tooltip = (
            "Stop the running job at the next slice, block or iteration; a cancelled job "
            "leaves no half-made result"
        )
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.progress.tooltip = "How far the running job is (slices, blocks or iterations)"
        self.status = Label(value="")
        self.reason = Label(value="", visible=False)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
        )
        super().__init__(widgets=[buttons, self.reason, self.progress, self.status], labels=False)
        for label in (self.status, self.reason):
            label.native.setWordWrap(True)
            # A wrapped label asks for about 80 characters of width (Qt's hint), which widens
            # a narrow dock past its edge; any width will do, the text wraps to fit.
            label.native.setMinimumWidth(120)
            policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
            policy.setHeightForWidth(True)
            label.native.setSizePolicy(policy)
        self.reason.native.setStyleSheet("color: #e0a040;")
        self.run_button.changed.connect(lambda *_: on_run())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        # The worker only stores (done, total); a GUI-thread timer shows it. The worker thread
        # never touches Qt, and a fast job cannot flood the event loop with updates.
        self._latest: tuple[int, int] | None = None
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        self._cancel_event: threading.Event | None = None
        self._infos: list[Any] = []
        self._on_info: Callable[[Any], None] | None = None
        self._activity = None  # napari.utils.progress of a running job, once it runs long
        self._shown = (0, 0)  # the (done, total) on show
        self._started = 0.0  # time.monotonic() at start
        self._description = ""
        self.worker = None
        self._problem: str | None = None

    @property
    def busy(self) -> bool:
        """True while a job runs."""
        return self.worker is not None

    def set_problem(self, problem: str | None) -> None:
        """Disable the run button with ``problem`` as the reason, shown in its own line of the
        dock (None enables it); a finished job's message stays beside it."""
        self._problem = problem
        if self.busy:
            return
        self.run_button.enabled = problem is None
        self.run_button.tooltip = problem or self.run_tip
        self.reason.value = problem or ""
        self.reason.visible = problem is not None

    @property
    def problem(self) -> str | None:
        """The reason Run is disabled, or None."""
        return self._problem

    def refuse(self, problem: str | None) -> bool:
        """Show ``problem`` (found when Run is pressed) as an error and return True; return
        False when there is none. Every dock's ``run`` starts with this check."""
        if problem is None or problem == "":
            return False
        self.status.value = problem  # whole here; the notification may be shortened
        notify_error(problem)
        return True

    def cancel(self) -> None:
        if self._cancel_event is not None:
            self._cancel_event.set()
            self.status.value = "Cancelling..."

    def _show_progress(self, *, may_open_activity: bool = True) -> None:
        latest, self._latest = self._latest, None
        self._drain_info()
        if latest is not None:
            done, total = self._shown = (int(latest[0]), int(latest[1]))
            self.progress.max = max(1, total)
            self.progress.value = min(done, self.progress.max)
            self.progress.label = f"{done}/{total}"
        if self._activity is None and may_open_activity and self.worker is not None:
            # napari's activity dock animates an "in progress" GIF in the status bar, and every
            # frame repaints the window: on software OpenGL (VNC, remote desktops, Xvfb) that
            # took 0.8 s of CPU from a 2 s 3D job on 2 cores (docs/benchmarks.md). Quick jobs
            # keep to the dock's own bar; long ones appear in the activity dock too.
            if time.monotonic() - self._started >= ACTIVITY_AFTER_S:
                from napari.utils import progress as activity

                self._activity = activity(total=self._shown[1], desc=self._description)
        if self._activity is not None:
            done, total = self._shown
            if self._activity.total != total:
                self._activity.total = total
            self._activity.update(max(0, done - self._activity.n))

    def _drain_info(self) -> None:
        """Hand the ``info`` mappings the worker reported to ``on_info`` (GUI thread)."""
        infos, self._infos = self._infos, []
        if self._on_info is not None:
            for info in infos:
                self._on_info(info)

    def start(
        self,
        job: JobFunction,
        on_done: Callable[[Any], str | None],
        *,
        description: str = "Running",
        on_info: Callable[[Any], None] | None = None,
        result_after_cancel: bool = False,
        compute: bool = False,
    ) -> None:
        """Run ``job`` in a thread worker (see the class docstring). Every ``info`` mapping
        the job reports (``progress(done, total, info)``) reaches ``on_info`` in the GUI
        thread, in order (e.g. a training iteration's losses for a live plot). A result
        returned after Cancel is dropped unless ``result_after_cancel`` (training keeps the
        model learned so far). Jobs that run a model pass ``compute=True``: they run in the
        plugin's compute thread (:func:`compute_executor`), after any such job before them."""
        from napari.qt.threading import create_worker

        cancel = threading.Event()
        self._infos = []
        self._on_info = on_info

        def progress(done: int, total: int, info: Any = None) -> None:
            self._latest = (int(done), int(total))  # one tuple swap: atomic under the GIL
            if info is not None and on_info is not None:
                self._infos.append(dict(info))  # list.append is atomic under the GIL

        def run_job():
            if cancel.is_set():  # cancelled while it waited for another job
                raise Cancelled("Cancelled before it started.")
            return job(progress, cancel)

        def work():
            try:
                return in_compute_thread(run_job) if compute else run_job()
            except EmpanadaError as exc:
                return _Failure(exc)
            except Exception as exc:  # noqa: BLE001 - shown to the user, traceback logged
                logger.exception("empanada-napari job failed")
                return _Failure(exc)

        self._cancel_event = cancel
        self.progress.value = 0
        self.progress.max = 1
        self.progress.label = "progress"
        waits = compute and compute_busy()
        self.status.value = f"{description}..." + (" (after the running job)" if waits else "")
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._activity, self._shown, self._description = None, (0, 0), description
        self._started = time.monotonic()
        worker = create_worker(work, _start_thread=False)

        def returned(result: Any) -> None:
            if isinstance(result, _Failure):
                if result.cancelled:
                    self.status.value = "Cancelled."
                    notify_info(result.message or "Cancelled.")
                else:
                    self.status.value = f"Failed: {result.message}"
                    notify_error(result.message)
                return
            if cancel.is_set() and not result_after_cancel:
                # The job ended before it saw the Cancel: the user asked for nothing.
                self.status.value = "Cancelled."
                return
            try:
                message = on_done(result)
            except EmpanadaError as exc:
                self.status.value = f"Failed: {exc}"
                notify_error(str(exc))
                return
            self.status.value = message if isinstance(message, str) else "Done."

        def finished() -> None:
            self._timer.stop()
            self._show_progress(may_open_activity=False)
            if self._activity is not None:
                self._activity.close()
                self._activity = None
            self.worker = None
            self._cancel_event = None
            self.cancel_button.enabled = False
            self.set_problem(self._problem)

        worker.returned.connect(returned)
        worker.finished.connect(finished)
        self.worker = worker
        self._latest = None
        self._timer.start()
        worker.start()


# --------------------------------------------------------------------------- parameters


def settings_controls(
    cls: type, names: tuple[str, ...] | None = None, defaults: Any = None
) -> dict[str, Any]:
    """One magicgui widget per field of a settings class (core/settings.py), keyed by field
    name, with its default (or ``defaults``' value: a preset), limits, label and help (as
    tooltip) taken from the field."""
    controls: dict[str, Any] = {}
    by_name = {f.name: f for f in setting_fields(cls)}
    for name in names if names is not None else tuple(by_name):
        f = by_name[name]
        meta, kind = f.metadata, str(f.type)
        default = getattr(defaults, name) if defaults is not None else f.default
        common = {"label": widget_label(f), "tooltip": tooltip(f, default)}
        if meta.get("choices"):
            widget = ComboBox(choices=meta["choices"], value=default, **common)
        elif kind == "bool":
            widget = CheckBox(value=default, text=widget_label(f), tooltip=common["tooltip"])
        elif kind == "str":
            widget = LineEdit(value=default, **common)
        else:
            limits = {
                k: meta[key]
                for k, key in (("min", "minimum"), ("max", "maximum"), ("step", "step"))
                if meta.get(key) is not None
            }
            # An optional number (None: off) shows as 0 in a spin box.
            value = default if default is not None else 0
            spin = FloatSpinBox if "float" in kind else SpinBox
            if spin is SpinBox:
                limits.setdefault("max", 10**9)
            widget = spin(value=value, **limits, **common)
        controls[name] = widget
    return controls


def settings_values(cls: type, controls: dict[str, Any]) -> dict[str, Any]:
    """Field values from :func:`settings_controls` widgets (0 in an optional number: None)."""
    optional = {f.name for f in setting_fields(cls) if "None" in str(f.type)}
    values = {}
    for name, widget in controls.items():
        value = widget.value
        if name in optional and not value:
            value = None
        values[name] = value
    return values


#: The 2D engine's controls in the widgets, in this order (the rest keep their defaults).
ENGINE_FIELDS = (
    "confidence_thr",
    "center_confidence_thr",
    "min_distance_object_centers",
    "fine_boundaries",
    "semantic_only",
    "fill_holes",
    "absorb_fragments",
    "min_area",
    "split_fragments",
    "downsample",
    "tta",
    "label_divisor",
    "tile_size",
)


def engine_controls(*, per_slice: bool) -> dict[str, Any]:
    """Widgets for the 2D engine's settings. ``per_slice`` adds the options that only make
    sense for independent slices (split fragments, label divisor)."""
    from ..core.settings import InferenceSettings

    skip = () if per_slice else ("split_fragments", "label_divisor", "min_area")
    return settings_controls(InferenceSettings, tuple(n for n in ENGINE_FIELDS if n not in skip))


def follow_model_settings(picker: Any, controls: dict[str, Any]) -> None:
    """Set ``controls`` to the post-processing settings tuned for the model chosen in
    ``picker`` (the defaults for a model without), now and whenever the choice changes; a
    value the user changed since it was last set stays as the user left it."""
    from ..core.settings import TUNED_FIELDS, InferenceSettings

    defaults = InferenceSettings()
    applied: dict[str, Any] = {}

    def apply(*_: Any) -> None:
        tuned = picker.tuned_settings()
        for name in TUNED_FIELDS:
            control = controls.get(name)
            if control is None:
                continue
            if name in applied and control.value != applied[name]:
                continue  # the user's own choice
            control.value = tuned.get(name, getattr(defaults, name))
            applied[name] = control.value

    picker.changed.connect(apply)
    if hasattr(picker, "on_auto_choice"):  # "auto" learns its model after it is chosen
        picker.on_auto_choice(apply)
    apply()


def split_advanced(controls: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(main, advanced) widgets of :func:`settings_controls`, by the settings' own marks."""
    advanced_names = {
        f.name
        for cls in SETTINGS_CLASSES.values()
        for f in setting_fields(cls)
        if f.metadata.get("advanced")
    }
    main = [w for name, w in controls.items() if name not in advanced_names]
    advanced = [w for name, w in controls.items() if name in advanced_names]
    return main, advanced


def count_label(n: int, what: str = "object") -> str:
    """``"1 object"``, ``"12 objects"``."""
    return f"{n} {what}" + ("" if n == 1 else "s")


def engine_params(controls: dict[str, Any]) -> dict[str, Any]:
    """InferenceSettings fields from :func:`engine_controls` widgets."""
    from ..core.settings import InferenceSettings

    params = settings_values(InferenceSettings, controls)
    tile = params.get("tile_size") or 0
    # Overlap must stay below half a tile: 128 px (the default) unless tiles are small.
    params["tile_overlap"] = min(128, tile // 4)
    return params


def watch_inputs(widget: Container, viewer: napari.viewer.Viewer) -> None:
    """Re-check ``widget.problem()`` whenever anything it may depend on changes: its own
    values, the layer list, the viewer's display (2D/3D) and current slice, and the data of
    every Shapes layer (an ROI drawn after the dock was opened)."""

    def update(*_: Any) -> None:
        try:
            widget.jobs.set_problem(widget.problem())
        except RuntimeError:  # the dock's Qt widgets are gone (closed)
            pass

    followed: weakref.WeakSet = weakref.WeakSet()

    def follow_shapes(*_: Any) -> None:
        for layer in viewer.layers:
            if isinstance(layer, napari.layers.Shapes) and layer not in followed:
                layer.events.data.connect(update)
                followed.add(layer)

    widget.changed.connect(update)
    for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
        event.connect(update)
    viewer.layers.events.inserted.connect(follow_shapes)
    viewer.dims.events.ndisplay.connect(update)
    viewer.dims.events.current_step.connect(update)
    follow_shapes()
    update()


# --------------------------------------------------------------------------- layers


def layer_array(layer: napari.layers.Layer):
    """The full-resolution data of a layer (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_problem(layer: Any, ndim: tuple[int, ...] = (2, 3, 4)) -> str | None:
    """Why an Image layer cannot be segmented, or None. Reads no pixels."""
    if layer is None:
        return "Open or choose an Image layer (EM, greyscale)."
    if not isinstance(layer, napari.layers.Image):
        return f"Layer '{layer.name}' is a {type(layer).__name__} layer; choose an Image layer."
    if getattr(layer, "rgb", False):
        return (
            f"Layer '{layer.name}' is an RGB image; EM images are greyscale. Convert it to "
            "one channel first."
        )
    data = layer_array(layer)
    dtype = np.dtype(data.dtype)
    if dtype == np.bool_ or dtype.kind not in "uif":
        return f"Layer '{layer.name}' has dtype {dtype}; expected a greyscale EM image."
    if any(s == 0 for s in data.shape):
        return f"Layer '{layer.name}' is empty (shape {tuple(data.shape)})."
    if data.ndim not in ndim:
        return (
            f"Layer '{layer.name}' has {data.ndim} dimensions; this widget takes "
            f"{' or '.join(map(str, ndim))}."
        )
    return None


def leading_index(viewer: napari.viewer.Viewer, layer: Any, keep: int) -> tuple[int, ...]:
    """Indices of ``layer``'s leading dimensions at the viewer's current position.

    The last ``keep`` dimensions are left out (2 for a plane, 3 for a volume).
    """
    data = layer_array(layer)
    lead = data.ndim - keep
    if lead <= 0:
        return ()
    point = layer.world_to_data(viewer.dims.point)
    return tuple(
        int(np.clip(np.round(p), 0, s - 1))
        for p, s in zip(point[:lead], data.shape[:lead], strict=True)
    )


def place_like(layer: Any, ndim: int, offset: tuple[int, ...] = ()) -> dict[str, Any]:
    """``scale``/``translate`` (and ``units``) so that an array of the last ``ndim`` dims of
    ``layer`` (shifted by ``offset`` pixels in its last dims) overlays it."""
    scale = np.asarray(layer.scale)[-ndim:]
    translate = np.asarray(layer.translate, dtype=float)[-ndim:].copy()
    if offset:
        translate[-len(offset) :] += np.asarray(offset) * scale[-len(offset) :]
    placed: dict[str, Any] = {"scale": tuple(scale), "translate": tuple(translate)}
    units = tuple(str(u) for u in getattr(layer, "units", ()))[-ndim:]
    if len(units) == ndim and any(u != "pixel" for u in units):
        placed["units"] = units
    return placed


def write_into_labels(labels_layer: Any, index: tuple, values: np.ndarray) -> None:
    """Write ``values`` into ``labels_layer.data[index]`` through napari's undo history.

    ``index`` is a tuple of ints and slices; values are cast to the layer's dtype.
    """
    data = labels_layer.data
    target_dtype = np.dtype(data.dtype)
    if values.size and np.iinfo(target_dtype).max < int(values.max()):
        raise EmpanadaError(
            f"Label ids up to {int(values.max())} do not fit layer '{labels_layer.name}' "
            f"({target_dtype}); use a new layer or a smaller label divisor."
        )
    grids = []
    sub_shape = values.shape
    k = 0
    for item in index:
        if isinstance(item, slice):
            start = item.start or 0
            grids.append(np.arange(start, start + sub_shape[k]))
            k += 1
        else:
            grids.append(np.array([int(item)]))
    mesh = np.meshgrid(*grids, indexing="ij")
    indices = tuple(m.ravel() for m in mesh)
    labels_layer.data_setitem(indices, values.astype(target_dtype).ravel())
