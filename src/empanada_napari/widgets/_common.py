"""Plumbing shared by the dock widgets: notifications, settings controls and layer helpers
(jobs are in :mod:`._jobs`, the pickers in :mod:`._pickers`).

Kept free of torch at import time (napari loads the plugin's widget modules when it builds its
menus); torch comes in with the first job.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    LineEdit,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info

from ..core.errors import EmpanadaError
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
