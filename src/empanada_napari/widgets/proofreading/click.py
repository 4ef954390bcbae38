"""Click to Add: a click on a missed mitochondrion adds it; Shift-click removes one.

Each click runs the model on a window around it (``core.proofread.prompts``) in the plugin's
compute thread and writes the object found into the labels layer with a fresh id as one
undo step (Ctrl+Z). Boxes drawn in a Shapes layer add every object inside them. On labels
made per slice (2D results, training patches) an edit stays in the clicked plane.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox

from ...core import proofread as pr
from ...core.errors import EmpanadaError, InputError
from ...core.proofread._boxes import read
from ...core.proofread.edits import make_edit
from .._common import PATCHES_META, notify_info
from .._pickers import LayerPicker, ModelPicker, device_picker, preload_model
from ._dock import MODE_TIP, MODES, PLANE, VOLUME, ProofreadDock, fixed_axes, per_plane
from ._tracking import LayerJob

if TYPE_CHECKING:
    import napari

#: Intensity range per image layer (uint8: fixed; others: read once per layer, in a worker).
_RANGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _value_range(layer: Any, data: Any) -> tuple[float, float]:
    """The image's intensity range, read once per layer (and again when its data change)."""
    cached = _RANGES.get(layer)
    if cached is not None and cached[0] is data:
        return cached[1]
    from ...core.preprocess import intensity_range

    value_range = intensity_range(data)
    _RANGES[layer] = (data, value_range)
    return value_range


def _grid_offset(image: Any, labels: Any) -> np.ndarray:
    """Pixel offset from the image's last two axes to the labels' (they must share the
    pixel grid: same scale, translations a whole number of pixels apart)."""
    si, sl = np.asarray(image.scale)[-2:], np.asarray(labels.scale)[-2:]
    shift = (np.asarray(image.translate)[-2:] - np.asarray(labels.translate)[-2:]) / sl
    if not np.allclose(si, sl) or not np.allclose(shift, np.round(shift), atol=1e-3):
        raise InputError(
            f"'{labels.name}' and '{image.name}' are not on the same pixel grid (scale "
            f"{tuple(sl)} vs {tuple(si)}): choose the labels made from this image"
        )
    return np.round(shift).astype(int)


class ClickToAdd(ProofreadDock):
    """Click on a mitochondrion the labels miss and the model draws it (one undo step each).

    Tick "clicks add objects", select the image or labels layer in pan/zoom mode, and click
    inside a missed object; Shift-click an object to remove it. Draw rectangles in a Shapes
    layer and press "Add objects in boxes" for clusters. Objects get fresh ids; an existing
    object is never overwritten unless "replace the object under the click" is ticked.
    """

    run_text = "Add objects in boxes"
    description = "Adding"

    def controls(self) -> list[Any]:
        self.image = LayerPicker(self.viewer, ("image",), label="image")
        self.image.tooltip = "The EM image the model looks at (the one the labels belong to)."
        self.labels_layer.tooltip = "The labels the clicks edit (a result, or patch labels)."
        self.model = ModelPicker()
        self.model.tooltip = "The model that draws the clicked object (any registered model)."
        self.device = device_picker()
        preload_model(self.model, self.device)
        self.active = CheckBox(value=True, text="clicks add objects (Shift-click removes)")
        self.active.tooltip = (
            "While ticked, a click on the image or labels layer (pan/zoom mode, the layer "
            "selected) adds the object under it; Shift-click deletes the object under it."
        )
        self.replace = CheckBox(value=False, text="replace the object under the click")
        self.replace.tooltip = (
            "Redraw a wrong outline: the labelled object under the click is removed (in the "
            "clicked plane) and the model's object takes its place. Off: a click on a "
            "labelled object only says its id."
        )
        self.follow = CheckBox(value=False, text="follow through slices (3D)")
        self.follow.tooltip = (
            "On a 3D labels layer: follow the clicked object through the neighbouring "
            "slices with the stack linker's rule until it ends, so one click adds a whole "
            "mitochondrion."
        )
        self.mode = ComboBox(choices=MODES, value=VOLUME, label="remove in", tooltip=MODE_TIP)
        self.shapes = LayerPicker(self.viewer, ("shapes",), extra=(("none", None),), label="boxes")
        self.shapes.tooltip = "A Shapes layer whose rectangles 'Add objects in boxes' fills."
        self._callback = _weak_mouse_callback(self)
        self.viewer.mouse_drag_callbacks.append(self._callback)
        return [self.image, self.model, self.device, self.active, self.replace, self.follow,
                self.mode, self.shapes]  # fmt: skip

    def _layer_chosen(self, *_: Any) -> None:
        """Edits on labels made per slice stay in the plane (see :func:`per_plane`)."""
        super()._layer_chosen()
        layer = self.labels_layer.value
        if layer is not None and per_plane(layer):
            self.follow.value = False

    def needs_points(self) -> bool:
        return False

    def problem(self) -> str | None:
        if self.image.value is None:
            return "Open or choose the Image layer the labels belong to."
        if self.labels_layer.value is None:
            return "Choose a Labels layer to add to (or make one: Layers > New Labels)."
        return None

    # -- clicks
    def click(self, world: Any, *, remove: bool = False) -> bool:
        """Add (or with ``remove`` delete) the object under ``world`` (viewer coordinates).
        Returns whether a job started; every refusal is said in the dock and a notification."""
        image, labels = self.image.value, self.labels_layer.value
        try:
            if image is None or labels is None:
                raise InputError(self.problem() or "choose the image and the labels")
            if self.jobs.busy:
                raise InputError("still working on the previous click: wait for it")
            _check_shown(labels)
            world = np.asarray(world, float)
            full = np.asarray(self.viewer.dims.point, float).copy()
            full[len(full) - len(world) :] = world
            pi = _inside(image.world_to_data(full), image.data.shape, image.name)
            pl = _inside(labels.world_to_data(full), labels.data.shape, labels.name)
            offset = _grid_offset(image, labels)
            if remove:
                return self._remove(labels, pl)
            return self._add(image, labels, pi, pl, offset)
        except EmpanadaError as err:
            self.fail(str(err))
            return False

    def _fixed(self, layer: Any, at: tuple[int, ...]) -> dict[int, int]:
        """Axes an edit holds at the click: the plane on per-slice labels or in plane mode."""
        if layer.ndim < 3:
            return {}
        if per_plane(layer) or self.mode.value == PLANE:
            return {a: at[a] for a in range(layer.ndim - 2)}
        return fixed_axes(self.viewer, layer, VOLUME)

    def _remove(self, layer: Any, at: tuple[int, ...]) -> bool:
        label_id = int(pr.labels_at(layer.data, [at])[0])
        if label_id == 0:
            raise InputError("Shift-click on a labelled object to remove it (this is background)")
        fixed = self._fixed(layer, at)

        def work(index, _progress, _cancel):
            return pr.delete_labels(layer.data, [label_id], index=index, fixed=fixed)

        where = _place(layer, at[0]) if fixed else ""
        return self._start(layer, work, lambda e: f"removed {label_id}{where} (undo: Ctrl+Z)")

    def _add(self, image, layer, pi, pl, offset) -> bool:
        under = int(pr.labels_at(layer.data, [pl])[0])
        replace = self.replace.value
        if under and not replace:
            raise InputError(
                f"already labelled: object {under} is here. Tick 'replace the object under "
                "the click' to redraw it, or Shift-click to remove it."
            )
        follow = self.follow.value and layer.ndim == 3 and image.data.ndim == 3
        if follow and per_plane(layer):
            follow = False
        data = image.data[0] if getattr(image, "multiscale", False) else image.data
        if data.ndim not in (2, 3):
            raise InputError(f"'{image.name}' has {data.ndim} axes; clicks work on 2D or 3D images")
        lead_i = tuple(pi[: data.ndim - 2])
        model, device = self.model.value, self.device.value
        point = (*lead_i, *pi[-2:])
        # Replacing redraws the outline in the clicked plane; followed through the slices,
        # the new object replaces the old one wherever the mode says.
        plane = {a: pl[a] for a in range(layer.ndim - 2)}
        replace_with = (under, self._fixed(layer, pl) if follow else plane) if under else None
        shift = _shift(pi, pl, layer.ndim, offset)

        def work(index, progress, cancel):
            from ...core.proofread.prompts import Prompter

            value_range = _value_range(image, data)  # read here: a volume's sample is slow
            prompter = Prompter(model, device)
            if follow:
                found = prompter.follow(data, point, value_range=value_range, progress=progress,
                                        cancel=cancel)  # fmt: skip
            else:
                found = prompter.point(data, point, value_range=value_range)
            if found.empty:
                return found.reason
            placed = [_to_labels(found, tuple(layer.data.shape), shift)]
            return _paint(layer.data, index, placed, replace_with)

        return self._start(layer, work, lambda edit: _describe_add(edit, layer))

    def _start(self, layer, work, describe) -> bool:
        session = LayerJob(layer)

        def job(progress, cancel):
            try:
                index = session.index(progress, cancel)
                result = work(index, progress, cancel)
                progress(1, 1)
                return result
            finally:
                session.close()

        def done(result: Any) -> str:
            session.adopt()
            if isinstance(result, str):  # nothing found: the reason
                notify_info(result)
                return result
            if not session.write(result):
                message = "nothing changed: the object found is already labelled"
            else:
                message = describe(result)
            notify_info(message)
            return message

        try:
            self.jobs.start(job, done, description="Looking", compute=True)
        except BaseException:
            session.close()
            raise
        return True

    # -- boxes (the Run button)
    def prepare(self, layer: napari.layers.Labels):
        raise NotImplementedError  # run() is overridden: boxes need the image too

    def run(self) -> None:
        image, layer, shapes = self.image.value, self.labels_layer.value, self.shapes.value
        problem = self.problem()
        if problem is None and shapes is None:
            problem = "Draw rectangles in a Shapes layer and choose it under 'boxes' first."
        if problem:
            self.fail(problem)
            return
        if self.jobs.busy:
            self.fail("still working on the previous click: wait for it")
            return
        try:
            _check_shown(layer)
            boxes = _rectangles(self.viewer, shapes, image)
            offset = _grid_offset(image, layer)
            data = image.data[0] if getattr(image, "multiscale", False) else image.data
            here = np.asarray(self.viewer.dims.point, float)
            pi = np.round(image.world_to_data(here)).astype(int)
            pl = np.round(layer.world_to_data(here)).astype(int)
            shift = _shift(pi, pl, layer.ndim, offset)
        except EmpanadaError as err:
            self.fail(str(err))
            return
        model, device = self.model.value, self.device.value

        def work(index, progress, cancel):
            from ...core.proofread.prompts import Prompter

            value_range = _value_range(image, data)
            prompter = Prompter(model, device)
            founds = []
            for k, box in enumerate(boxes):
                if cancel.is_set():
                    break
                founds.append(prompter.box(data, box, value_range=value_range))
                progress(k + 1, len(boxes))
            found = [f for f in founds if not f.empty]
            if not found:
                return "no mitochondrion found in the box(es); nothing added"
            shape = tuple(layer.data.shape)
            return _paint(layer.data, index, [_to_labels(f, shape, shift) for f in found])

        def describe(edit: pr.Edit) -> str:
            used = {i for i, kind in enumerate(shapes.shape_type) if kind == "rectangle"}
            shapes.selected_data = used
            shapes.remove_selected()
            return f"added {len(edit.new_ids)} object(s) from {len(boxes)} box(es) (undo: Ctrl+Z)"

        self._start(layer, work, describe)


def _check_shown(labels: Any) -> None:
    """Refuse to edit labels that are not on screen: a click would change what nobody sees
    (patch labels are hidden off their patch's slice, see widgets._patch_nav)."""
    if labels.visible:
        return
    if PATCHES_META in (labels.metadata or {}):
        raise InputError(
            f"'{labels.name}' is hidden: patch labels show only on the slice their patch "
            "came from. Go back to it, or choose a patch with '< Previous', 'Next >' or the "
            "table in Pick Training Patches."
        )
    raise InputError(f"'{labels.name}' is hidden: show it (its eye in the layer list) to edit it")


def _place(layer: Any, plane: int) -> str:
    """Where an edit in ``plane`` of ``layer``'s first axis is, in words: the patch (and the
    source slice it was cut from) on patch labels, else the slice."""
    meta = (getattr(layer, "metadata", None) or {}).get(PATCHES_META)
    if not meta:
        return f" in slice {plane}"
    infos = meta.get("patches") or []
    where = f" in patch {plane}"
    if 0 <= plane < len(infos) and len(infos[plane].get("start", ())) == 3:
        info = infos[plane]
        axis = int(info.get("axis", 0))
        middle = (info["start"][axis] + info["stop"][axis] - 1) // 2
        source = f" of '{meta['source']}'" if meta.get("source") else ""
        along = "slice" if axis == 0 else f"{'zyx'[axis]} ="
        where += f" (from {along} {middle}{source})"
    return where


def _describe_add(edit: pr.Edit, layer: Any = None) -> str:
    """'added 4 in slice 5', or on patch labels 'added 4 in patch 5 (from slice 1 of ...)'."""
    new = edit.new_ids[0]
    patches = PATCHES_META in (getattr(layer, "metadata", None) or {})
    z = edit.box[0] if len(edit.box) == 3 or (patches and len(edit.box) > 2) else None
    where = ""
    if z is not None and z.stop - z.start > 1:
        where = f" through slices {z.start}-{z.stop - 1}"
    elif z is not None:
        where = _place(layer, z.start)
    replaced = f", replacing {edit.removed_ids[0]}" if edit.removed_ids else ""
    return f"added {new}{where}{replaced} (undo: Ctrl+Z)"


def _shift(pi: Any, pl: Any, ndim: int, offset: np.ndarray) -> np.ndarray:
    """Per labels axis, what to add to an image pixel to get the labels pixel: the grid
    offset in y and x; in z the difference of the two at the click (a 2D image's result
    goes to the clicked plane of 3D labels)."""
    pi, pl = np.asarray(pi, int), np.asarray(pl, int)
    shift = np.zeros(ndim, int)
    shift[-2:] = offset
    if ndim == 3:
        shift[0] = pl[0] - (pi[0] if len(pi) == 3 else 0)
    return shift


def _inside(coords: Any, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    at = np.round(np.asarray(coords, float)).astype(int)
    if np.any(at < 0) or np.any(at >= np.asarray(shape)):
        raise InputError(f"the click is outside '{name}' (shape {tuple(shape)}): click on it")
    return tuple(int(v) for v in at)


def _fresh_id(index: pr.LabelIndex) -> int:
    return int(index.ids.max()) + 1 if len(index.ids) else 1


def _to_labels(found: Any, shape: tuple[int, ...], shift: np.ndarray) -> tuple[tuple, np.ndarray]:
    """A prompt's result moved into the labels' coordinates: (box, labels in it), clipped to
    the labels layer. ``shift`` (one per labels axis) maps image pixels to labels pixels; a
    2D result on 3D labels is placed in the plane ``shift[0]`` says."""
    values = found.labels
    ndim = len(shape)
    starts = [s.start for s in found.box]
    while len(starts) < ndim:  # a 2D image's result on (z, y, x) labels
        values, starts = values[None], [0, *starts]
    while len(starts) > ndim:  # a plane of a volume on 2D labels
        values, starts = values[0], starts[1:]
    lo = np.asarray(starts) + shift
    hi = lo + np.asarray(values.shape)
    clo, chi = np.maximum(lo, 0), np.minimum(hi, shape)
    if np.any(chi <= clo):
        raise InputError("the object found lies outside the labels layer")
    inner = tuple(slice(int(a - b), int(c - b)) for a, b, c in zip(clo, lo, chi, strict=True))
    box = tuple(slice(int(a), int(c)) for a, c in zip(clo, chi, strict=True))
    return box, values[inner]


def _union(a: tuple, b: tuple) -> tuple:
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def _within(outer: tuple, inner: tuple) -> tuple:
    """``inner`` (a box) relative to ``outer``."""
    return tuple(
        slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner, strict=True)
    )


def _paint(labels: Any, index: pr.LabelIndex, placed: list[tuple[tuple, np.ndarray]],
           replace: tuple[int, dict] | None = None) -> pr.Edit:  # fmt: skip
    """One edit writing every object of ``placed`` ((box, labels 1..k) in the labels'
    coordinates) with fresh ids, over background only; with ``replace`` = (id, fixed axes)
    that object is removed first (where ``fixed`` holds it)."""
    box = placed[0][0]
    for b, _ in placed[1:]:
        box = _union(box, b)
    removed = []
    if replace is not None:
        under, fixed = replace
        box = _union(box, index.union_box([under], fixed))
        removed = [under]
    old = read(labels, box)
    new = old.copy()
    if replace is not None:
        region = new[_within(box, index.union_box([under], replace[1]))]
        region[region == under] = 0
    next_id = _fresh_id(index)
    new_ids = []
    for b, values in placed:
        region = new[_within(box, b)]
        for k in np.unique(values):
            free = (values == k) & (region == 0) if k else None
            if free is not None and free.any():
                region[free] = region.dtype.type(next_id)
                new_ids.append(next_id)
                next_id += 1
    return make_edit(box, old, new, new_ids=new_ids, removed_ids=removed)


def _rectangles(viewer, shapes, image) -> list[tuple[float, ...]]:
    """(z, y0, x0, y1, x1) (or (y0, x0, y1, x1)) in image data coordinates of the Shapes
    layer's rectangles (the selected ones, else all)."""
    kinds = list(shapes.shape_type)
    chosen = [i for i in sorted(shapes.selected_data) if kinds[i] == "rectangle"] or [
        i for i, k in enumerate(kinds) if k == "rectangle"
    ]
    if not chosen:
        raise InputError(f"'{shapes.name}' has no rectangle: draw one around the objects")
    data = image.data[0] if getattr(image, "multiscale", False) else image.data
    nlead = data.ndim - 2
    boxes = []
    for i in chosen:
        pts = []
        for vertex in np.asarray(shapes.data[i]):
            world = np.asarray(viewer.dims.point, float).copy()
            w = shapes.data_to_world(vertex)
            world[len(world) - len(w) :] = w
            pts.append(image.world_to_data(world))
        pts = np.asarray(pts)
        lead = [int(np.clip(np.round(pts[0, a]), 0, data.shape[a] - 1)) for a in range(nlead)]
        y0, x0 = np.floor(pts[:, -2:].min(0))
        y1, x1 = np.ceil(pts[:, -2:].max(0))
        boxes.append((*lead, y0, x0, y1, x1))
    return boxes


def _weak_mouse_callback(dock: ClickToAdd):
    """A viewer mouse callback that holds the dock weakly (a closed dock stops listening):
    a click (press and release without a drag) on the image or labels layer, in pan/zoom
    mode, adds the object under it; with Shift it removes."""
    ref = weakref.ref(dock)

    def callback(viewer, event):
        widget = ref()
        if widget is None or event.button != 1:
            return
        try:
            if not widget.active.value:
                return
            layer = viewer.layers.selection.active
            if layer is None or layer not in (widget.image.value, widget.labels_layer.value):
                return
            if getattr(layer, "mode", "pan_zoom") != "pan_zoom":
                return  # painting, filling, picking: napari's own tools
        except RuntimeError:  # the dock's Qt side is gone
            return
        start = np.asarray(event.position, float)
        remove = "Shift" in [str(getattr(m, "name", m)) for m in event.modifiers]
        yield
        moved = False
        while event.type == "mouse_move":
            moved = moved or bool(np.abs(np.asarray(event.position) - start).max() > 2)
            yield
        if moved:
            return  # a pan, not a click
        widget = ref()
        if widget is not None:
            widget.click(start, remove=remove)

    return callback
