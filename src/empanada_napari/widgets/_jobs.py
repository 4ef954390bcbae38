"""Jobs of the dock widgets: a job runs in a napari worker thread (the plugin's one compute
thread when it uses a model) behind a :class:`JobPanel` (Run, Cancel, a determinate progress
bar, the status line and the reason Run is disabled).

Kept free of torch at import time (napari loads the plugin's widget modules when it builds its
menus); torch comes in with the first job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from ..core.errors import Cancelled, EmpanadaError
from ._common import notify_error, notify_info

logger = logging.getLogger(__name__)


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

    #: Run jobs start to finish in the calling (GUI) thread instead of a napari worker: a
    #: dock's logic is then tested with nothing to wait for (the ``inline_jobs`` fixture).
    #: Cancel cannot reach a job run this way; the Cancel tests keep the worker.
    inline: ClassVar[bool] = False

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
            except Exception as exc:  # noqa: BLE001 - said in the dock, never a stuck status
                if not isinstance(exc, EmpanadaError):
                    logger.exception("empanada-napari: showing a job's result failed")
                text = str(exc) if isinstance(exc, EmpanadaError) else _Failure(exc).message
                self.status.value = f"Failed: {text}"
                notify_error(text)
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

        self._latest = None
        if JobPanel.inline:
            # Start to finish in this thread: the dock's logic, tested without a worker.
            result = work()
            returned(result)
            finished()
            return
        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(returned)
        worker.finished.connect(finished)
        self.worker = worker
        self._timer.start()
        worker.start()
