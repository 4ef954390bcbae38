"""Pickers shared by the dock widgets: model (kept in step with the registry and the
plugin-wide "use this model now" signal), device and layer choices."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import napari
from magicgui.widgets import ComboBox
from qtpy.QtCore import QObject, Signal

from ..core.errors import EmpanadaError
from ._common import compute_executor

logger = logging.getLogger(__name__)
#: Set to 0 to open docks without loading their model in the background (the tests do).
PRELOAD_ENV = "EMPANADA_NAPARI_PRELOAD"
PRELOAD_MODULES = (
    "empanada_napari.core.inference.engine",
    "empanada_napari.core.inference.slices",
    "empanada_napari.core.inference.stack",
    "empanada_napari.core.inference.chunked",
    "empanada_napari.core.inference.ortho",
    "pandas",
)

if TYPE_CHECKING:
    from ..core.models.registry import ModelRegistry


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


def select_model(name: str, *, finished: bool = True) -> None:
    """Select model ``name`` in every open model picker (inference docks, Model Manager);
    a model that is not ``finished`` (a cancelled run's) is not picked where a picker only
    follows finished models (Finetune's "start from")."""
    model_selections().selected.emit(name, finished)


class ModelPicker(ComboBox):
    """Model choice that refreshes whenever the registry changes (register/import/remove).

    It follows the plugin-wide "use this model now" selections; with ``only_finished`` it
    ignores those of unfinished (cancelled) runs."""

    def __init__(
        self, registry: ModelRegistry | None = None, *, only_finished: bool = False, **kwargs: Any
    ) -> None:
        from ..core.models.registry import get_registry

        self.registry = registry or get_registry()
        self.only_finished = only_finished
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
        from ..core.models.loading import default_model_name

        names = self.registry.names()
        name = default_model_name(self.registry)
        return name if name in names else (names[0] if names else None)

    def _model_names(self, _widget: Any = None) -> list[str]:
        try:
            return self.registry.names()
        except EmpanadaError:
            return []

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

        try:
            return model_recommendations(self.registry.get(self.value).config) if self.value else {}
        except EmpanadaError:
            return {}

    def _update_tooltip(self, *_: Any) -> None:
        name = self.value
        try:
            self.tooltip = self.registry.get(name).description if name else ""
        except EmpanadaError:
            self.tooltip = ""


def preload_model(picker: ModelPicker, device: ComboBox) -> None:
    """Load the chosen model in the background when a dock opens and whenever the model or
    the device changes, if its file is on this computer already (never a download), so the
    first Run finds it in ``load_model``'s cache instead of waiting for it. A failure is left
    for Run to report; a Run that starts during the load waits for it (the cache's lock)."""
    if os.environ.get(PRELOAD_ENV, "1") == "0":
        return

    def start(*_: Any) -> None:
        name, dev = picker.value, device.value
        try:
            if not name or picker.registry.local_file(name) is None:
                return
        except EmpanadaError:
            return
        # The compute thread, where Run will use the model (see compute_executor).
        compute_executor().submit(_preload, name, dev)

    picker.changed.connect(start)
    device.changed.connect(start)
    start()


def _preload(name: str, device: str) -> None:
    import importlib

    try:
        from ..core.models.loading import load_model

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
