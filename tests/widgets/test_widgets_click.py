"""Click to Add in a napari viewer, on the real Lucchi crop with the bundled model.

A click on a missed mitochondrion adds it with a fresh id as one undo step; a click on
background adds nothing and uses no id; on a 2D result (ids restart per slice) a click or a
Shift-click changes its plane only; the mouse callback tells a click from a pan.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from empanada_napari.widgets import _common
from empanada_napari.widgets import _napari_compat as compat
from empanada_napari.widgets.proofreading import click as click_mod

from ..conftest import DATA

PLUGIN = "empanada-napari"


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_raw.tif")[:6]


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_instances_2d.tif")[:6].astype(np.int64)


@pytest.fixture
def messages(monkeypatch) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {"error": [], "info": []}
    for kind in ("error", "info"):
        monkeypatch.setattr(_common, f"show_{kind}", got[kind].append)
    monkeypatch.setattr(click_mod, "notify_info", got["info"].append)
    return got


def _deepest(obj: np.ndarray) -> tuple[int, int]:
    dist = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(np.argmax(dist), dist.shape))


def _dock(viewer, image, labels):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Click to Add")
    widget.reset_choices()
    widget.image.value, widget.labels_layer.value = image, labels
    return widget


# The dock's jobs run inline (nothing to wait for): these tests are about what a click does.
pytestmark = pytest.mark.usefixtures("inline_jobs")


def _click(qtbot, widget, at, **kw) -> bool:
    started = widget.click(at, **kw)
    assert not widget.jobs.busy  # done when the click returns
    return started


def test_a_click_adds_the_missed_object_as_one_undo_step(
    make_napari_viewer, qtbot, raw, truth, messages
):
    viewer = make_napari_viewer()
    image = viewer.add_image(raw)
    start = truth.astype(np.uint32)
    z = 3
    ids = np.unique(truth[z])[1:]
    missed = int(max(ids, key=lambda i: (truth[z] == i).sum()))
    start[z][truth[z] == missed] = 0  # the object the automatic pass "missed"
    layer = viewer.add_labels(start.copy())
    w = _dock(viewer, image, layer)
    viewer.dims.set_current_step(0, z)
    assert _click(qtbot, w, (z, *_deepest(truth[z] == missed)))
    added = np.asarray(layer.data) != start
    new_id = int(start.max()) + 1
    assert set(np.unique(np.asarray(layer.data)[added])) == {new_id}, messages
    obj = truth[z] == missed
    got = np.asarray(layer.data)[z] == new_id
    assert (got & obj).sum() / (got | obj).sum() >= 0.7
    assert not added[np.arange(len(raw)) != z].any()  # only the clicked plane
    assert not (added & (start > 0)).any()  # nothing labelled was overwritten
    assert (
        len(compat.undo_items(layer)) == 1 and f"added {new_id} in slice {z}" in w.jobs.status.value
    )
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), start)  # undo restores exactly
    # A click on background: nothing, no undo step, said in the dock.
    far = np.argwhere(ndi.distance_transform_edt(truth[z] == 0) >= 30)[0]
    assert _click(qtbot, w, (z, *far))
    assert np.array_equal(np.asarray(layer.data), start) and len(compat.undo_items(layer)) == 0
    assert "no mitochondrion" in w.jobs.status.value
    # The next addition still gets the first free id (none was used up).
    assert _click(qtbot, w, (z, *_deepest(obj)))
    assert (np.asarray(layer.data) == new_id).any()


def test_a_click_on_an_object_says_its_id_and_replace_redraws_it(
    make_napari_viewer, qtbot, raw, truth, messages
):
    viewer = make_napari_viewer()
    image = viewer.add_image(raw)
    z = 2
    i = int(np.unique(truth[z])[1])
    start = np.zeros(raw.shape, np.uint32)
    bad = ndi.binary_erosion(truth[z] == i, iterations=6)  # a poor outline of object i
    start[z][bad] = 7
    start[z + 1][bad] = 7  # the same 3D object goes on in the next slice
    layer = viewer.add_labels(start.copy())
    w = _dock(viewer, image, layer)
    at = (z, *_deepest(truth[z] == i))
    assert not _click(qtbot, w, at)
    assert "object 7 is here" in messages["error"][-1]
    assert np.array_equal(np.asarray(layer.data), start)
    w.replace.value = True
    assert _click(qtbot, w, at)
    data = np.asarray(layer.data)
    assert not (data[z] == 7).any() and (data[z] == 8).sum() > bad.sum()
    assert np.array_equal(data[z + 1], start[z + 1])  # redrawn in the clicked plane only
    assert "replacing 7" in w.jobs.status.value
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), start)


def test_on_a_2d_result_clicks_and_removals_stay_in_their_plane(
    make_napari_viewer, qtbot, raw, truth, messages
):
    # A 2D batch result: ids restart in every slice (10001, 10002, ... in each plane).
    viewer = make_napari_viewer()
    image = viewer.add_image(raw)
    per_slice = np.zeros(raw.shape, np.uint32)
    for z in range(len(raw)):
        ids = np.unique(truth[z])[1:]
        for k, i in enumerate(ids, 1):
            per_slice[z][truth[z] == i] = 10000 + k
    layer = viewer.add_labels(per_slice.copy(), metadata={"empanada": {"mode": "2d"}})
    w = _dock(viewer, image, layer)
    assert w.mode.value == "current plane"  # chosen for such a layer
    w.mode.value = "3D"  # even when asked for 3D, a removal stays in the plane
    z = 4
    viewer.dims.set_current_step(0, z)
    at = (z, *_deepest(per_slice[z] == 10001))
    assert _click(qtbot, w, at, remove=True)
    data = np.array(layer.data)
    changed = data != per_slice
    assert changed[z].any() and not changed[np.arange(len(raw)) != z].any()
    assert (data[3] == 10001).any()  # the same id in another slice is untouched
    assert _click(qtbot, w, at)  # added back, in its plane only
    changed = np.asarray(layer.data) != data
    assert changed[z].any() and not changed[np.arange(len(raw)) != z].any()
    layer.undo()
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), per_slice)


def test_on_patch_labels_the_dock_names_the_patch_and_its_slice(
    make_napari_viewer, qtbot, raw, truth, messages
):
    # Was: "added 4 in slice 5" on patch labels, where 5 was the patch's number in the
    # stack and the patch came from slice 1.
    from empanada_napari.widgets._common import PATCHES_META

    z = 4
    ids = np.unique(truth[z])[1:]
    big = int(max(ids, key=lambda i: (truth[z] == i).sum()))
    cy, cx = _deepest(truth[z] == big)
    size = 96
    y0 = int(np.clip(cy - size // 2, 0, raw.shape[1] - size))
    x0 = int(np.clip(cx - size // 2, 0, raw.shape[2] - size))
    corners = [(0, 0), (y0, x0), (raw.shape[1] - size, raw.shape[2] - size)]
    infos = [
        {"source": "lucchi", "axis": 0, "start": [z, y, x], "stop": [z + 1, y + size, x + size]}
        for y, x in corners
    ]
    meta = {PATCHES_META: {"source": "lucchi", "patches": infos}}
    stack = np.stack([raw[z, y : y + size, x : x + size] for y, x in corners])
    viewer = make_napari_viewer()
    patches = viewer.add_image(stack, metadata=meta)
    labels = viewer.add_labels(np.zeros(stack.shape, np.uint32), metadata=meta)
    w = _dock(viewer, patches, labels)
    viewer.dims.set_current_step(0, 1)
    at = (1, cy - y0, cx - x0)
    assert _click(qtbot, w, at)
    assert (np.asarray(labels.data)[1] == 1).any() and not np.asarray(labels.data)[[0, 2]].any()
    said = w.jobs.status.value
    assert "added 1 in patch 1 (from slice 4 of 'lucchi')" in said, said
    assert _click(qtbot, w, at, remove=True)
    assert "removed 1 in patch 1 (from slice 4 of 'lucchi')" in w.jobs.status.value
    # Hidden labels (patch labels are hidden off their patch's slice) are never edited.
    labels.visible = False
    assert not _click(qtbot, w, at)
    assert "is hidden" in messages["error"][-1], messages
    assert "'< Previous', 'Next >'" in w.jobs.status.value, w.jobs.status.value
    assert not np.asarray(labels.data).any()


def test_the_mouse_callback_tells_a_click_from_a_pan(
    make_napari_viewer, qtbot, raw, messages, monkeypatch
):
    viewer = make_napari_viewer()
    image = viewer.add_image(raw)
    layer = viewer.add_labels(np.zeros(raw.shape, np.uint32))
    w = _dock(viewer, image, layer)
    seen = []
    monkeypatch.setattr(
        click_mod.ClickToAdd,
        "click",
        lambda _self, at, remove=False: seen.append((tuple(at), remove)),
    )

    class Event:
        def __init__(self, kind, position, modifiers=()):
            self.type, self.position, self.modifiers, self.button = kind, position, modifiers, 1

    def drive(events):
        gen = w._callback(viewer, events[0])
        try:
            next(gen)
        except StopIteration:  # not a click for this dock: napari's own tools keep it
            return
        for event in events[1:]:
            events[0].type, events[0].position = event.type, event.position
            try:
                next(gen)
            except StopIteration:
                return

    viewer.layers.selection.active = layer
    press = Event("mouse_press", (2, 50, 60))
    drive([press, Event("mouse_release", (2, 50, 60))])
    assert seen == [((2.0, 50.0, 60.0), False)]
    drive([Event("mouse_press", (2, 50, 60)), Event("mouse_move", (2, 80, 90)),
           Event("mouse_release", (2, 80, 90))])  # fmt: skip
    assert len(seen) == 1  # a drag pans: no click
    drive([Event("mouse_press", (2, 50, 60), ("Shift",)), Event("mouse_release", (2, 50, 60))])
    assert seen[-1] == ((2.0, 50.0, 60.0), True)
    layer.mode = "paint"  # napari's own tools keep their clicks
    drive([Event("mouse_press", (2, 5, 6)), Event("mouse_release", (2, 5, 6))])
    w.active.value = False
    layer.mode = "pan_zoom"
    drive([Event("mouse_press", (2, 5, 6)), Event("mouse_release", (2, 5, 6))])
    assert len(seen) == 2


def test_boxes_add_every_object_inside_them(make_napari_viewer, qtbot, raw, truth, messages):
    viewer = make_napari_viewer()
    image = viewer.add_image(raw)
    layer = viewer.add_labels(np.zeros(raw.shape, np.uint32))
    z = 1
    viewer.dims.set_current_step(0, z)
    boxes = ndi.find_objects(truth[z])
    rects = []
    for i in np.unique(truth[z])[1:3]:
        b = boxes[i - 1]
        y0, x0, y1, x1 = b[0].start - 3, b[1].start - 3, b[0].stop + 3, b[1].stop + 3
        rects.append(np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]]))
    shapes = viewer.add_shapes(rects, shape_type="rectangle")
    w = _dock(viewer, image, layer)
    w.shapes.value = shapes
    w.run()
    assert not w.jobs.busy
    data = np.asarray(layer.data)
    assert len(np.unique(data[z])) >= 3, (w.jobs.status.value, messages)
    assert not data[np.arange(len(raw)) != z].any()
    assert len(compat.undo_items(layer)) == 1 and len(shapes.data) == 0


def test_refusals_are_sentences(make_napari_viewer, qtbot, raw, messages):
    viewer = make_napari_viewer()
    image = viewer.add_image(raw)
    layer = viewer.add_labels(np.zeros((6, 100, 100), np.uint32), scale=(1, 2, 2))
    w = _dock(viewer, image, layer)
    assert not w.click((2, 50, 50))
    assert "same pixel grid" in messages["error"][-1]
    layer2 = viewer.add_labels(np.zeros(raw.shape, np.uint32))
    w.labels_layer.value = layer2
    assert not w.click((2, 5000, 50))
    assert "outside" in messages["error"][-1]
    assert not w.click((2, 5, 5), remove=True)
    assert "background" in messages["error"][-1]
