"""Pickers shared by the dock widgets: model (kept in step with the registry and the
plugin-wide "use this model now" signal), device and layer choices."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import napari
from magicgui.widgets import ComboBox
from qtpy.QtCore import QObject, Signal

from ..core.errors import EmpanadaError
from ._jobs import compute_executor

logger = logging.getLogger(__name__)
#: Set to 0 to open docks without model work in the background (the tests do): neither
#: loading their model nor estimating how well it fits the image (widgets/_model_fit.py).
PRELOAD_ENV = "EMPANADA_NAPARI_PRELOAD"
#: The model pickers' choice "the model that fits this image best" (``ModelPicker(auto=True)``).
AUTO = "auto"
AUTO_TIP = (
    "auto: the model whose four flipped views agree most on this image (scored in the "
    "background on a few sampled regions), among the models on this computer."
)
PRELOAD_MODULES = (
    "empanada_napari.core.inference.engine",
    "empanada_napari.core.inference.slices",
    "empanada_napari.core.inference.stack",
    "empanada_napari.core.inference.chunked",
    "empanada_napari.core.inference.ortho",
    "pandas",
)

if TYPE_CHECKING:
    from ..core.models import ModelRegistry


class _RegistryWatcher(QObject):
    """Registry listener that hops to the GUI thread: registrations may run in a worker."""

    changed = Signal()
    chosen = Signal(str, bool)

    def notify(self) -> None:
        try:
            self.changed.emit()
        except RuntimeError:  # the Qt object is gone; the registry drops dead listeners
            pass

    def relay(self, name: str, finished: bool) -> None:
        try:
            self.chosen.emit(name, finished)
        except RuntimeError:  # the picker's Qt side is gone
            pass


class _Selections(QObject):
    """One signal for the whole plugin: "use this model now" (after finetuning, import), and
    whether the model is a finished run (False: the best weights of a cancelled one)."""

    selected = Signal(str, bool)


_SELECTIONS: _Selections | None = None


def model_selections() -> _Selections:
    """The plugin-wide selection signal (created in the GUI thread on first use)."""
    global _SELECTIONS
    if _SELECTIONS is None:
        _SELECTIONS = _Selections()
    return _SELECTIONS


def background_enabled() -> bool:
    """Whether docks may run a model in the background (see :data:`PRELOAD_ENV`)."""
    return os.environ.get(PRELOAD_ENV, "1") != "0"


def select_model(name: str, *, finished: bool = True) -> None:
    """Select model ``name`` in every open model picker (inference docks, Model Manager);
    a model that is not ``finished`` (a cancelled run's) is not picked where a picker only
    follows finished models (Finetune's "start from")."""
    model_selections().selected.emit(name, finished)


class ModelPicker(ComboBox):
    """Model choice that refreshes whenever the registry changes (register/import/remove).

    It follows the plugin-wide "use this model now" selections; with ``only_finished`` it
    ignores those of unfinished (cancelled) runs. With ``auto`` its first choice is
    :data:`AUTO`, whose model the dock learns later (:meth:`set_auto_choice`): read
    :attr:`chosen`, never the value, for the model itself."""

    def __init__(
        self,
        registry: ModelRegistry | None = None,
        *,
        only_finished: bool = False,
        auto: bool = False,
        **kwargs: Any,
    ) -> None:
        from ..core.models import get_registry

        self.registry = registry or get_registry()
        self.only_finished = only_finished
        self.offers_auto = auto
        self._auto_choice: str | None = None
        self._auto_listeners: list[Callable[[str | None], None]] = []
        super().__init__(choices=self._model_names, label=kwargs.pop("label", "model"), **kwargs)
        # Parented to the combo box: Qt deletes it with the widget, which drops its
        # connections, so a closed dock's picker is never asked to select or refresh.
        self._watcher = _RegistryWatcher(self.native)
        self._watcher.changed.connect(self.refresh)
        # The registry holds bound methods weakly, so a closed widget's picker drops out by
        # itself (no ``destroyed`` hook: PySide6 may call it on a half-deleted object).
        self.registry.add_listener(self._watcher.notify)
        # Qt drops the connection with the watcher, so closed pickers stop listening.
        model_selections().selected.connect(self._watcher.relay)
        self._watcher.chosen.connect(self._selected)
        self.value = self.default_name()
        self._update_tooltip()
        self.changed.connect(self._update_tooltip)

    def default_name(self) -> str | None:
        from ..core.models import default_model_name

        names = self.registry.names()
        name = default_model_name(self.registry)
        if name in names:
            return name
        return names[0] if names else (AUTO if self.offers_auto else None)

    def has_models(self) -> bool:
        """Whether any model is registered ("auto" alone is none)."""
        return any(name != AUTO for name in self.choices)

    def _model_names(self, _widget: Any = None) -> list[str]:
        try:
            names = self.registry.names()
        except EmpanadaError:
            names = []
        return [AUTO, *names] if self.offers_auto else names

    @property
    def chosen(self) -> str | None:
        """The model the choice stands for: for :data:`AUTO` the one picked for the image
        (None until it is known), else the value itself."""
        return self._auto_choice if self.value == AUTO else self.value

    def set_auto_choice(self, name: str | None) -> None:
        """Say which model :data:`AUTO` stands for now (None: not known)."""
        if name == self._auto_choice:
            return
        self._auto_choice = name
        self._update_tooltip()
        for listener in list(self._auto_listeners):
            listener(name)

    def on_auto_choice(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(name)`` whenever :data:`AUTO` comes to stand for another model."""
        self._auto_listeners.append(listener)

    def refresh(self) -> None:
        """Re-read the registry, keeping the current choice when it still exists."""
        current = self.value
        self.reset_choices()
        if current in self.choices:
            self.value = current
        elif self.choices:
            self.value = self.default_name()
        self._update_tooltip()

    def _selected(self, name: str, finished: bool) -> None:
        if finished or not self.only_finished:
            self.select(name)

    def select(self, name: str) -> None:
        """Choose ``name`` (re-reading the registry first if it is new here)."""
        if name not in self.choices:
            self.refresh()
        if name in self.choices:
            self.value = name

    def tuned_settings(self) -> dict[str, Any]:
        """The inference settings tuned for the chosen model when it was finetuned ({}
        for none, or for a model whose config cannot be read)."""
        from ..core.settings import model_recommendations

        name = self.chosen  # "auto" has none until its model is known
        try:
            return model_recommendations(self.registry.get(name).config) if name else {}
        except EmpanadaError:
            return {}

    def _update_tooltip(self, *_: Any) -> None:
        name = self.chosen
        try:
            tip = self.registry.get(name).description if name else ""
        except EmpanadaError:
            tip = ""
        if self.value == AUTO:
            tip = AUTO_TIP + (f" Now: {name}. {tip}" if name else "")
        self.tooltip = tip.strip()


def preload_model(picker: ModelPicker, device: ComboBox) -> None:
    """Load the chosen model in the background when a dock opens and whenever the model or
    the device changes, if its file is on this computer already (never a download), so the
    first Run finds it in ``load_model``'s cache instead of waiting for it. A failure is left
    for Run to report; a Run that starts during the load waits for it (the cache's lock)."""
    if not background_enabled():
        return

    def start(*_: Any) -> None:
        name, dev = picker.chosen, device.value  # "auto": loaded when its model is known
        try:
            if not name or picker.registry.local_file(name) is None:
                return
        except EmpanadaError:
            return
        # The compute thread, where Run will use the model (see compute_executor).
        compute_executor().submit(_preload, name, dev)

    picker.changed.connect(start)
    picker.on_auto_choice(start)
    device.changed.connect(start)
    start()


def _preload(name: str, device: str) -> None:
    import importlib

    try:
        from ..core.models import load_model

        load_model(name, device)
    except Exception:  # noqa: BLE001 - Run loads it again and says what is wrong
        logger.debug("preloading %s failed", name, exc_info=True)
    # Modules a first Run would otherwise import, some in the GUI thread while it shows the
    # result (0.6 s of a 0.8 s first click measured: the slice linker's scipy.optimize, and
    # pandas, which napari imports for the first Labels layer's features).
    for module in PRELOAD_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            pass


_DEVICES: list[str] = []  # every device torch can use here, found once per session


def device_picker() -> ComboBox:
    """Device choice: auto plus every device torch can use here.

    Finding the GPUs needs torch, whose import takes seconds: it runs in a worker thread the
    first time, so opening a dock never freezes the window; "auto" and "cpu" are there from
    the start, the GPUs join the list when found.
    """
    picker = ComboBox(choices=["auto", *(_DEVICES or ["cpu"])], value="auto", label="device")
    picker.tooltip = "Where the model runs: auto picks a CUDA GPU, then Apple MPS, then the CPU."
    if _DEVICES:
        return picker
    from napari.qt.threading import create_worker

    from ..core.device import available_devices

    def found(devices: list[str]) -> None:
        _DEVICES[:] = devices
        try:
            value = picker.value
            picker.choices = ["auto", *devices]
            picker.value = value if value in picker.choices else "auto"
        except RuntimeError:  # the dock was closed meanwhile
            pass

    worker = create_worker(available_devices, _start_thread=False)
    worker.returned.connect(found)
    picker._device_worker = worker  # keep it alive until it reports
    worker.start()
    return picker


class LayerPicker(ComboBox):
    """Choice among the viewer's layers of some kinds, kept in step with the layer list."""

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        kinds: tuple[str, ...],
        *,
        extra: tuple[tuple[str, Any], ...] = (),
        **kwargs: Any,
    ) -> None:
        self._viewer = viewer
        # napari's layer classes, not their names: subclasses (and layers of other plugins
        # that derive from them) count too.
        self._classes = tuple(getattr(napari.layers, kind.capitalize()) for kind in kinds)
        self._extra = extra
        super().__init__(choices=self._choices, **kwargs)
        # napari holds bound methods weakly: no need to disconnect when the widget goes.
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self._refresh)

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        layers = [
            (layer.name, layer) for layer in self._viewer.layers if isinstance(layer, self._classes)
        ]
        return [*self._extra, *layers]

    def _refresh(self, *_: Any) -> None:
        try:
            self.reset_choices()
        except RuntimeError:  # the Qt widget is already deleted
            pass
