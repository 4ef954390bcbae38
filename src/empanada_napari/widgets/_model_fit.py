"""How well the chosen model fits the chosen image, under the inference docks' model picker
(issue 36), and the picker's "auto" choice.

The fit is the agreement of the model's four flipped views on a few sampled regions
(:func:`~empanada_napari.core.quality.estimate_quality`, seconds on a CPU). It is estimated
in the plugin's compute thread (:func:`~._jobs.compute_executor`) when the image or the
model changes, and cached per (image data, model): a second look, or a Run, costs nothing.
A Run never waits for an estimate that has not started (it goes first, the estimate after
it); one that waits on "auto" scores the models itself, as it must know which one to use.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QSizePolicy

from ..core.errors import EmpanadaError
from ..core.quality import UNSURE_BELOW
from ._common import image_problem, layer_array, leading_index
from ._jobs import compute_busy, compute_executor
from ._pickers import AUTO, background_enabled

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import ComboBox

    from ..core.quality import QualityEstimate
    from ._jobs import JobPanel
    from ._pickers import LayerPicker, ModelPicker

logger = logging.getLogger(__name__)

#: The fit line's words before the agreement ("fits this image: 0.83").
FITS = "fits this image"
FIT_TIP = (
    "How well the chosen model fits this image: how much its four flipped views agree on a "
    f"few sampled regions (0..1, no labels needed; below {UNSURE_BELOW} the model is unsure "
    "here). Estimated in the background when the image or the model changes."
)
WARNING_TIP = (
    "The model is unsure on this data: adapt it to your microscope with Pick Training "
    "Patches, correct the patches, then Finetune Model."
)

# ------------------------------------------------------------------------- the cache

_LOCK = threading.Lock()
# (id(image data), model name or AUTO) -> (weak reference to the data or None, result): an
# estimate, or for AUTO choose_model's (best name, estimates). The reference tells a live
# array from a new one that was given the id of a freed one.
_CACHE: dict[tuple[int, str], tuple[Any, Any]] = {}


def cached_fit(data: Any, name: str) -> Any:
    """The cached estimate of model ``name`` on ``data`` (for :data:`AUTO`: the best model
    and every estimate), or None."""
    with _LOCK:
        entry = _CACHE.get((id(data), name))
    if entry is None or (entry[0] is not None and entry[0]() is not data):
        return None
    return entry[1]


def clear_fit_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def _store(data: Any, name: str, value: Any) -> None:
    try:
        ref = weakref.ref(data)
    except TypeError:  # an array type without weak references: the id alone
        ref = None
    with _LOCK:
        for key in [k for k, (r, _) in _CACHE.items() if r is not None and r() is None]:
            del _CACHE[key]  # images that are gone
        _CACHE[(id(data), name)] = (ref, value)


@dataclass
class FitTarget:
    """What an estimate needs, read in the GUI thread: the layer's data (the cache key), the
    image the model sees (the volume at the viewer's time point for a 4D/5D layer) and the
    device."""

    data: Any
    image: Any
    device: str


def estimate_fit(target: FitTarget, name: str) -> QualityEstimate:
    """(Compute thread.) Model ``name``'s fit on the target image, from the cache if known."""
    found = cached_fit(target.data, name)
    if found is None:
        from ..core.quality import estimate_quality

        found = estimate_quality(target.image, name, device=target.device)
        _store(target.data, name, found)
    return found


def choose_fit(target: FitTarget) -> tuple[str, list[QualityEstimate]]:
    """(Compute thread.) The best model for the target image and every model's estimate
    (``choose_model``), from the cache if known; each estimate is cached too."""
    found = cached_fit(target.data, AUTO)
    if found is None:
        from ..core.quality import choose_model

        found = choose_model(target.image, device=target.device)
        for estimate in found[1]:
            _store(target.data, estimate.model, estimate)
        _store(target.data, AUTO, found)
    return found


def run_model(target: FitTarget, name: str) -> str:
    """(Compute thread, in a Run.) The model to run with: ``name``, or the best one for
    "auto"."""
    return choose_fit(target)[0] if name == AUTO else name


def model_words(name: str) -> str:
    """A model's name for a status line ("auto": which one is not known yet)."""
    return "the model that fits best (auto)" if name == AUTO else name


def warning_for(estimate: Any) -> str | None:
    """The unsure warning for an estimate, or None (it fits, or it saw no mitochondria)."""
    from ..core.quality import unsure_warning

    if estimate is None or math.isnan(estimate.agreement) or not estimate.unsure:
        return None
    return unsure_warning(estimate)


# ------------------------------------------------------------------------- the lines


class _Relay(QObject):
    """Hands a result from the compute thread to the GUI thread (a queued signal)."""

    done = Signal(object, object)

    def send(self, key: Any, result: Any) -> None:
        try:
            self.done.emit(key, result)
        except RuntimeError:  # the dock was closed meanwhile
            pass


class ModelFit(Container):
    """Two lines under a dock's model picker: how well the model fits the image (or what
    "auto" chose) and, in orange, the warning when the model is unsure on it."""

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        image: LayerPicker,
        picker: ModelPicker,
        device: ComboBox,
        *,
        ndim: tuple[int, ...],
    ) -> None:
        # The label names the line in the dock's help; the dock shows no label column here.
        self.line = Label(value="", label="model fit", tooltip=FIT_TIP)
        self.warning = Label(value="", visible=False, tooltip=WARNING_TIP)
        super().__init__(widgets=[self.line, self.warning], labels=False)
        self.margins = (0, 0, 0, 0)
        for label in (self.line, self.warning):
            label.native.setWordWrap(True)
            label.native.setMinimumWidth(120)  # a long line wraps, the dock stays narrow
            policy = QSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
            policy.setHeightForWidth(True)
            label.native.setSizePolicy(policy)
        self.warning.native.setStyleSheet("color: #e0a040;")
        self.viewer, self.image, self.picker, self.device = viewer, image, picker, device
        self.ndim = ndim
        self.status: Label | None = None
        self._shown: tuple[int, str] | None = None  # the key the lines are for
        self._pending: set[tuple[int, str]] = set()
        self._notes: dict[tuple[int, str], list[Any]] = {}
        # Parented to the line: Qt deletes it with the dock, and a late result goes nowhere.
        self._relay = _Relay(self.line.native)
        self._relay.done.connect(self._arrived)
        image.changed.connect(self.update)
        picker.changed.connect(self.update)
        self.update()

    def follow_runs(self, jobs: JobPanel) -> None:
        """Let :meth:`note` add warnings that arrive after a Run to ``jobs``' status line."""
        self.status = jobs.status

    def target(self) -> FitTarget | None:
        """The chosen image as an estimate sees it, or None when there is none to use."""
        layer = self.image.value
        if image_problem(layer, self.ndim) is not None:
            return None
        data = layer_array(layer)
        lead = leading_index(self.viewer, layer, keep=min(data.ndim, 3))
        return FitTarget(data, data[lead] if lead else data, str(self.device.value))

    def update(self, *_: Any) -> None:
        """Show the fit of the current choice: at once from the cache, else "estimating"
        while the compute thread estimates it."""
        try:
            self._update()
        except RuntimeError:  # the dock's Qt widgets are gone
            pass

    def _update(self) -> None:
        name, target = self.picker.value, self.target()
        if name is None or target is None:
            self._shown = None
            self.picker.set_auto_choice(None)
            self._show_text("")
            return
        key = (id(target.data), name)
        self._shown = key
        found = cached_fit(target.data, name)
        if found is not None:
            self._show(found)
            return
        if name == AUTO:
            self.picker.set_auto_choice(None)
        if not background_enabled():
            self._show_text(f"{AUTO}: the model is chosen when you run" if name == AUTO else "")
            return
        self._show_text(f"{AUTO}: scoring the models..." if name == AUTO else f"{FITS}: ...")
        self._submit(target, name)

    def note(self, message: str, target: FitTarget | None, model: str) -> str:
        """``message`` (a finished Run's status line), with the warning when ``model`` is
        unsure on the image. An estimate not made yet is started; its warning joins the
        status line when it comes, if the line still shows ``message``."""
        self.update()  # "auto" now knows its model
        if target is None or model == AUTO:
            return message
        found = cached_fit(target.data, model)
        if found is not None:
            warning = warning_for(found)
            return f"{message} {warning}" if warning else message
        if background_enabled() and self.status is not None:
            status = self.status

            def add(result: Any) -> None:
                warning = warning_for(result) if not isinstance(result, BaseException) else None
                if warning and status.value == message:
                    status.value = f"{message} {warning}"

            self._notes.setdefault((id(target.data), model), []).append(add)
            self._submit(target, model)
        return message

    def _submit(self, target: FitTarget, name: str) -> None:
        key = (id(target.data), name)
        if key in self._pending:
            return
        self._pending.add(key)
        relay, executor = self._relay, compute_executor()

        def task() -> None:
            if compute_busy():  # a Run waits behind this estimate: it goes first
                executor.submit(task)
                return
            try:
                result: Any = choose_fit(target) if name == AUTO else estimate_fit(target, name)
            except Exception as exc:  # noqa: BLE001 - shown in the line; a Run says it again
                logger.debug("estimating the fit of %s failed", name, exc_info=True)
                result = exc
            relay.send(key, result)

        executor.submit(task)

    def _arrived(self, key: tuple[int, str], result: Any) -> None:
        self._pending.discard(key)
        try:
            if key == self._shown:
                self._show(result)
            for add in self._notes.pop(key, []):
                add(result)
        except RuntimeError:  # the dock was closed meanwhile
            pass

    def _show(self, result: Any) -> None:
        if isinstance(result, BaseException):
            reason = str(result) if isinstance(result, EmpanadaError) else type(result).__name__
            self._show_text(f"{AUTO}: {reason}" if self.picker.value == AUTO else f"{FITS}: ?")
            return
        if isinstance(result, tuple):  # AUTO: (best, every estimate)
            chosen, estimates = result
            scores = ", ".join(e.describe() for e in estimates if not math.isnan(e.agreement))
            self.picker.set_auto_choice(chosen)
            best = next((e for e in estimates if e.model == chosen), None)
            self._show_text(f"{AUTO}: {chosen} ({scores})", warning_for(best))
            return
        if math.isnan(result.agreement):
            self._show_text(f"{FITS}: unknown (no mitochondria in the sampled regions)")
            return
        self._show_text(f"{FITS}: {result.agreement:.2f}", warning_for(result))

    def _show_text(self, line: str, warning: str | None = None) -> None:
        self.line.value = line
        self.line.visible = bool(line)
        self.warning.value = warning or ""
        self.warning.visible = warning is not None
