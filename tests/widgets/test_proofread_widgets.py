"""Proofreading dock widgets in a headless napari viewer, on the real Lucchi crop.

Every dock runs its job in a worker thread: :func:`_run` clicks Run and waits for it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.core.proofread import LabelIndex
from empanada_napari.widgets import _common
from empanada_napari.widgets import _napari_compat as compat
from empanada_napari.widgets import proofreading as pw
from empanada_napari.widgets._jobs import JobPanel
from empanada_napari.widgets.proofreading import measure as pw_measure

from ..conftest import DATA

PLUGIN = "empanada-napari"


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_instances_3d_cc.tif")


@pytest.fixture
def messages(monkeypatch) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    for kind in ("error", "info"):
        monkeypatch.setattr(_common, f"show_{kind}", got[kind].append)
    monkeypatch.setattr(pw_measure, "show_warning", got["warning"].append)
    return got


def _dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    widget.reset_choices()
    return widget


# The docks' jobs run inline here (nothing to wait for), except in the tests of the worker
# thread itself, marked ``threaded``.
pytestmark = pytest.mark.usefixtures("inline_jobs")


def _run(qtbot, widget, timeout: int = 60_000) -> None:
    """Click the dock's Run button; its job has finished when this returns (inline), or is
    waited for (a ``threaded`` test)."""
    widget()
    if not JobPanel.inline:
        qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=timeout)
    assert not widget.jobs.busy


def _point_on(labels: np.ndarray, label_id: int, z: int | None = None) -> list[int]:
    coords = np.argwhere(labels == label_id)
    if z is not None:
        coords = coords[coords[:, 0] == z]
    return coords[len(coords) // 2].tolist()


def _assert_undo_redo(layer, before, after):
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), before)
    layer.redo()
    assert np.array_equal(np.asarray(layer.data), after)
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), before)
    assert pw.get_index(layer).equals(LabelIndex.build(np.asarray(layer.data)))


def test_merge_3d_and_undo(make_napari_viewer, qtbot, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    points = viewer.add_points([_point_on(crop, 37), _point_on(crop, 30)])
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.points.value, w.mode.value = layer, points, "3D"
    _run(qtbot, w)
    expected = np.where(crop == 37, 30, crop)
    assert np.array_equal(layer.data, expected), messages
    assert messages["info"] == ["merged [37] into 30"] and layer.selected_label == 30
    assert len(points.data) == 0  # the picks were used: cleared
    assert len(compat.undo_items(layer)) == 1  # one undo step
    box = LabelIndex.build(crop).union_box([37])
    outside = np.ones(crop.shape, bool)
    outside[box] = False
    assert np.array_equal(layer.data[outside], crop[outside])
    _assert_undo_redo(layer, crop, expected)


def test_merge_along_a_shapes_line_in_one_plane(make_napari_viewer, qtbot, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    viewer.dims.set_point(0, 8)
    line = viewer.add_shapes([np.array([[8, 200, 110], [8, 120, 150]])], shape_type="line")
    w = _dock(viewer, "Merge Labels")
    assert w.points.value is None  # no Points layer in the viewer
    w.labels_layer.value, w.shapes.value, w.mode.value = layer, line, pw.PLANE
    _run(qtbot, w)
    expected = crop.copy()
    expected[8][crop[8] == 30] = 17
    assert np.array_equal(layer.data, expected), messages
    assert len(line.data) == 0  # the line was used: removed
    _assert_undo_redo(layer, crop, expected)


def test_bad_picks_give_clear_messages(make_napari_viewer, qtbot, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.shapes.value = layer, None
    assert "No Points layer" in w.jobs.reason.value and not w.jobs.run_button.enabled
    _run(qtbot, w)
    assert "no Points layer" in messages["error"][-1]
    points = viewer.add_points([[5, 5, 5], _point_on(crop, 30)])
    w.reset_choices()
    w.points.value = points
    _run(qtbot, w)
    assert "background" in messages["error"][-1]
    points.data = np.array([[5, 500, 5], _point_on(crop, 30)])
    _run(qtbot, w)
    assert "outside the labels" in messages["error"][-1]
    points.data = np.array([_point_on(crop, 30)])
    _run(qtbot, w)
    assert "at least two" in messages["error"][-1]
    viewer.layers.remove(points)
    d = _dock(viewer, "Delete Labels")
    d.labels_layer.value = layer
    assert d.points.value is None
    _run(qtbot, d)
    assert "no Points layer" in messages["error"][-1]
    assert np.array_equal(layer.data, crop) and len(compat.undo_items(layer)) == 0


def test_split_with_markers_and_undo(make_napari_viewer, qtbot, crop, messages):
    merged = np.where(crop == 37, 30, crop).astype(crop.dtype)
    merged[:, 150:152, 150:230][merged[:, 150:152, 150:230] == 0] = 30
    viewer = make_napari_viewer()
    layer = viewer.add_labels(merged.copy())
    points = viewer.add_points([[8, 120, 150], [8, 190, 255]])
    w = _dock(viewer, "Split Labels")
    w.labels_layer.value, w.points.value = layer, points
    w.use_points_as_markers.value, w.mode.value = True, "3D"
    _run(qtbot, w)
    assert messages["info"] == ["split 30: new labels [45]"], messages
    after = np.asarray(layer.data).copy()
    assert set(np.unique(after[merged == 30])) == {30, 45}
    assert np.array_equal(after != 0, merged != 0)
    assert (after[crop == 37] == 30).mean() > 0.95 and (after[crop == 30] == 45).mean() > 0.9
    assert np.array_equal(after[merged != 30], merged[merged != 30])
    _assert_undo_redo(layer, merged, after)


def _delete_in_plane(qtbot, viewer, layer, truth, plane, label_id, messages):
    """Delete ``label_id`` in ``plane`` through the widget; check the result and undo/redo."""
    viewer.dims.set_point(0, plane)
    points = viewer.add_points([_point_on(truth, label_id, z=plane)])
    w = _dock(viewer, "Delete Labels")
    w.labels_layer.value, w.points.value, w.mode.value = layer, points, pw.PLANE
    _run(qtbot, w)
    expected = truth.copy()
    expected[plane][truth[plane] == label_id] = 0
    assert np.array_equal(np.asarray(layer.data), expected), messages
    _assert_undo_redo(layer, truth, expected)


def test_delete_in_plane_on_zarr_layer(make_napari_viewer, qtbot, crop, messages, tmp_path):
    import zarr

    z = zarr.create_array(tmp_path / "l.zarr", shape=crop.shape, chunks=(4, 64, 64), dtype="u2")
    z[:] = crop
    viewer = make_napari_viewer()
    layer = viewer.add_labels(z)
    _delete_in_plane(qtbot, viewer, layer, crop, 3, 37, messages)
    assert np.array_equal(z[:], crop)  # the zarr store itself was edited and restored


def test_delete_on_dask_layer_and_2d_plus_t(make_napari_viewer, qtbot, messages):
    import dask.array as da

    stack = tifffile.imread(DATA / "lucchi_crop_instances_2d.tif")  # t, y, x
    viewer = make_napari_viewer()
    layer = viewer.add_labels(da.from_array(stack.copy(), chunks=(2, 160, 160)))
    _delete_in_plane(qtbot, viewer, layer, stack, 6, 2, messages)


def test_morph_dilate_picked(make_napari_viewer, qtbot, crop, messages):
    from skimage.segmentation import expand_labels

    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    viewer.dims.set_point(0, 8)
    points = viewer.add_points([_point_on(crop, 17, z=8)])
    w = _dock(viewer, "Morph Labels")
    w.labels_layer.value, w.points.value = layer, points
    w.operation.value, w.radius.value, w.mode.value = "dilate", 2, pw.PLANE
    _run(qtbot, w)
    expected = crop.copy()
    grown = expand_labels(np.where(crop[8] == 17, 17, 0), 2)
    expected[8][(crop[8] == 0) & (grown == 17)] = 17
    assert np.array_equal(layer.data, expected), messages
    _assert_undo_redo(layer, crop, expected)


def test_index_follows_painting_and_undo(make_napari_viewer, qtbot, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    assert pw.get_index(layer).count(44) == 218
    # A brush stroke outside the widgets (in plane 1, where 44 is not: it changes voxels).
    layer.paint((1, 92, 184), 44, refresh=False)
    painted = np.asarray(layer.data).copy()
    assert (painted != crop).any() and pw.get_index(layer).count(44) > 218
    assert pw.get_index(layer).equals(LabelIndex.build(painted))
    points = viewer.add_points([_point_on(crop, 44), _point_on(crop, 30)])
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.points.value, w.mode.value = layer, points, "3D"
    _run(qtbot, w)
    assert not (layer.data == 44).any()
    layer.undo()  # the merge
    layer.undo()  # the brush stroke
    assert np.array_equal(layer.data, crop)
    assert pw.get_index(layer).equals(LabelIndex.build(crop))


def test_jump_and_next_available(make_napari_viewer, qtbot, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy(), scale=(2, 1, 1))
    viewer.dims.set_point(0, 20)
    w = _dock(viewer, "Jump to Label")
    w.labels_layer.value, w.label_id.value = layer, 44
    _run(qtbot, w)
    assert layer.selected_label == 44, messages
    assert viewer.dims.point[0] == 0  # label 44 exists only in plane 0
    centre = np.array(viewer.scene.camera.center)[-2:]
    assert np.abs(centre - np.argwhere(crop == 44)[:, 1:].mean(0)).max() < 3
    w.label_id.value = 45
    _run(qtbot, w)
    assert "not found" in messages["error"][-1]
    n = _dock(viewer, "Find Next Available Label")
    n.labels_layer.value = layer
    n.class_id.value, n.label_divisor.value = 0, 0
    _run(qtbot, n)
    assert layer.selected_label == 45
    n.class_id.value, n.label_divisor.value = 0, 40
    _run(qtbot, n)
    assert layer.selected_label == 38
    n.class_id.value = 2
    _run(qtbot, n)
    assert layer.selected_label == 81


def test_filter_into_new_layer(make_napari_viewer, qtbot, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    w = _dock(viewer, "Filter Labels")
    w.labels_layer.value, w.min_size.value = layer, 1000
    _run(qtbot, w)
    assert messages["info"] == ["removed 1 label(s)"]
    new = viewer.layers[f"{layer.name} filtered"]
    assert np.array_equal(new.data, np.where(crop == 44, 0, crop))
    assert np.array_equal(layer.data, crop)  # the source layer is untouched


def test_measure_table_sort_click_and_csv(make_napari_viewer, qtbot, crop, messages, tmp_path):
    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")
    viewer = make_napari_viewer()
    viewer.add_image(raw, name="raw", scale=(5, 5, 5))
    layer = viewer.add_labels(crop.copy(), scale=(5, 5, 5))
    w = _dock(viewer, "Measure Labels")
    w.labels_combo.value = layer
    w.image_combo.value = viewer.layers["raw"]
    w.divisor.value = 10
    w.measure_button.clicked.emit()
    qtbot.waitUntil(lambda: not w.jobs.busy, timeout=60_000)
    assert w.table["label"].tolist() == [17, 30, 37, 44]
    assert w.table["voxels"].tolist() == [int((crop == i).sum()) for i in (17, 30, 37, 44)]
    assert w.table["volume"][3] == 218 * 125
    np.testing.assert_allclose(w.table["mean_intensity"][0], raw[crop == 17].mean())
    assert w.summary.value == "class 1: 1, class 3: 2, class 4: 1"
    table = w.table_widget
    assert table.rowCount() == 4
    col = list(w.table).index("voxels")
    table.sortItems(col)  # ascending, numeric: 218 < 12562 < 23149 < 76958
    assert [table.item(r, col).data(0) for r in range(4)] == sorted(w.table["voxels"].tolist())
    assert w.row_label(0)[0] == 44
    w.on_row_clicked(0, 0)
    assert layer.selected_label == 44 and viewer.dims.point[0] == 0
    w.csv_path.value = tmp_path / "m.csv"
    w.export_button.clicked.emit()
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("label,class,voxels,volume")


# --------------------------------------------------------------------------- napari's API
def test_napari_history_format(make_napari_viewer, tmp_path):
    """Fails loudly when napari changes what widgets/_napari_compat.py relies on."""
    import dask.array as da
    import zarr

    viewer = make_napari_viewer()
    assert compat.camera(viewer) is viewer.scene.camera  # viewer.camera is deprecated
    layer = viewer.add_labels(np.zeros((4, 32, 32), np.uint16))
    steps = []
    layer.events.paint.connect(lambda e: steps.append(e.value))
    assert compat.undo_items(layer) == []
    layer.paint((1, 10, 10), 3, refresh=False)  # a brush: napari's masked atom
    (item,) = compat.undo_items(layer)
    assert len(item) == 1 and hasattr(item[0], "slice_key")
    box = compat.atom_box(item[0])
    assert box[0] == slice(1, 2) and box[1].start <= 10 < box[1].stop
    layer.data_setitem((np.array([2, 2]), np.array([5, 6]), np.array([7, 7])), 9)
    atom = compat.undo_items(layer)[-1][0]
    assert isinstance(atom, tuple) and len(atom) == 3  # (indices, old, new)
    assert compat.atom_box(atom) == (slice(2, 3), slice(5, 7), slice(7, 8))
    assert len(steps) == 2  # events.paint: one per new undo step
    marker = compat.history_marker(layer)
    box = (slice(0, 1), slice(0, 2), slice(0, 2))
    old = np.zeros((1, 2, 2), np.uint16)
    new = np.full((1, 2, 2), 6, np.uint16)
    compat.record_edit(layer, box, old, new)  # numpy: the public data_setitem
    assert compat.history_changed(layer, marker) and len(compat.undo_items(layer)) == 3
    assert (layer.data[box] == 6).all()
    layer.undo()
    assert (layer.data[box] == 0).all()
    # zarr and dask: a (box, old, new) atom through _save_history, replayed by undo/redo.
    store = zarr.create_array(tmp_path / "z.zarr", shape=(4, 32, 32), dtype="u2")
    store[:] = 0
    for data in (da.from_array(np.zeros((4, 32, 32), np.uint16), chunks=8), store):
        lay = viewer.add_labels(data)
        compat.record_edit(lay, box, old, new)
        (atom,) = compat.undo_items(lay)[-1]
        assert compat.atom_box(atom) == box
        assert (np.asarray(lay.data[box]) == 6).all()
        lay.undo()
        assert (np.asarray(lay.data[box]) == 0).all()
        lay.redo()
        assert (np.asarray(lay.data[box]) == 6).all()


# --------------------------------------------------------------------------- picks
def test_delete_after_merge_does_not_delete_the_merged_object(
    make_napari_viewer, qtbot, crop, messages
):
    # The picks an edit used are cleared: a Delete right after a Merge used to delete the
    # merged object with the merge's points.
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    points = viewer.add_points([_point_on(crop, 37), _point_on(crop, 30)])
    merge, delete = _dock(viewer, "Merge Labels"), _dock(viewer, "Delete Labels")
    merge.labels_layer.value, merge.points.value = layer, points
    delete.labels_layer.value, delete.points.value = layer, points
    _run(qtbot, merge)
    merged = np.asarray(layer.data).copy()
    assert (merged == 30).sum() == ((crop == 30) | (crop == 37)).sum()
    assert len(points.data) == 0
    _run(qtbot, delete)
    assert "no pick" in messages["error"][-1]
    assert np.array_equal(layer.data, merged) and len(compat.undo_items(layer)) == 1


@pytest.mark.parametrize("name", ["Merge Labels", "Split Labels", "Delete Labels", "Morph Labels"])
def test_each_picking_dock_explains_and_makes_a_points_layer(make_napari_viewer, qtbot, crop, name):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy(), scale=(2, 1, 1), translate=(0, 5, 5))
    w = _dock(viewer, name)
    w.labels_layer.value = layer
    texts = [getattr(c, "value", "") for c in w.form if type(c).__name__ == "Label"]
    assert any("Points layer" in str(t) and "click" in str(t) for t in texts)
    assert not w.jobs.run_button.enabled and "New points layer" in w.jobs.reason.value
    w.new_points_button.clicked.emit()
    points = viewer.layers[-1]
    assert type(points).__name__ == "Points" and w.points.value is points
    assert viewer.layers.selection.active is points and points.mode == "add"
    assert points.ndim == 3 and tuple(points.scale) == (2, 1, 1)
    assert tuple(points.translate) == (0, 5, 5)
    assert w.jobs.run_button.enabled and w.jobs.reason.value == ""


def test_defaults_are_the_same_in_every_dock(make_napari_viewer):
    viewer = make_napari_viewer()
    docks = {
        name: _dock(viewer, name)
        for name in (
            "Merge Labels",
            "Split Labels",
            "Delete Labels",
            "Morph Labels",
            "Find Next Available Label",
            "Measure Labels",
        )
    }
    modes = {n: w.mode.value for n, w in docks.items() if hasattr(w, "mode")}
    assert len(modes) == 4 and set(modes.values()) == {pw.VOLUME}
    divisors = [
        docks["Split Labels"].label_divisor,
        docks["Find Next Available Label"].label_divisor,
    ]
    divisors.append(docks["Measure Labels"].divisor)
    assert {d.value for d in divisors} == {0} and len({d.tooltip for d in divisors}) == 1


# --------------------------------------------------------------------------- split in 3D
def test_split_in_3d_from_the_viewed_plane_gives_no_stripes(
    make_napari_viewer, qtbot, crop, messages
):
    from scipy import ndimage as ndi

    merged = np.where(crop == 37, 30, crop).astype(crop.dtype)
    merged[:, 150:152, 150:230][merged[:, 150:152, 150:230] == 0] = 30
    viewer = make_napari_viewer()
    layer = viewer.add_labels(merged.copy())
    viewer.dims.set_point(0, 8)
    points = viewer.add_points([[8, 190, 255]])
    w = _dock(viewer, "Split Labels")
    w.labels_layer.value, w.points.value, w.mode.value = layer, points, pw.VOLUME
    _run(qtbot, w)
    assert messages["info"] == ["split 30: new labels [45]"], messages
    after = np.asarray(layer.data)
    for piece in (30, 45):  # the plane on screen: two whole pieces, no stripes
        assert ndi.label(after[8] == piece)[1] == 1
    assert ((after == 30) & (crop == 37)).sum() / (crop == 37).sum() > 0.95
    assert ((after == 45) & (crop == 30)).sum() / (crop == 30).sum() > 0.9
    assert len(points.data) == 0


# --------------------------------------------------------------------------- jobs
@pytest.mark.parametrize(
    "name", ["Merge Labels", "Measure Labels", "Filter Labels", "Morph Labels"]
)
@pytest.mark.threaded
def test_whole_volume_work_runs_in_a_worker_with_progress(
    make_napari_viewer, qtbot, crop, messages, monkeypatch, name
):
    import threading

    from empanada_napari.core import proofread as pr

    core_name = {
        "Merge Labels": "build",  # the first edit of a layer builds its index
        "Measure Labels": "measure_labels",
        "Filter Labels": "filter_labels",
        "Morph Labels": "morph_labels",
    }[name]
    owner = pr.LabelIndex if core_name == "build" else pr
    real = getattr(owner, core_name)
    seen = {}

    def spy(*args, progress=None, cancel=None, **kwargs):
        seen["main"] = threading.current_thread() is threading.main_thread()
        seen["progress"], seen["cancel"] = progress, cancel
        return real(*args, progress=progress, cancel=cancel, **kwargs)

    monkeypatch.setattr(owner, core_name, spy)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    points = viewer.add_points([_point_on(crop, 37), _point_on(crop, 30)])
    w = _dock(viewer, name)
    w.labels_layer.value = layer
    if hasattr(w, "points"):
        w.points.value = points
    if name == "Morph Labels":
        w.apply_to.value = "all labels"
    _run(qtbot, w)
    assert seen["main"] is False, messages  # not the GUI thread
    assert seen["progress"] is not None and seen["cancel"] is not None
    assert w.jobs.progress.value == w.jobs.progress.max >= 1
    assert messages["error"] == []


def _blocking_build(monkeypatch, release=None):
    """Make index builds wait (in the worker) for Cancel or for ``release``."""
    import threading
    import time

    from empanada_napari.core import jobs
    from empanada_napari.core import proofread as pr

    real = pr.LabelIndex.build
    started = threading.Event()

    def build(cls, labels, block_voxels=pr.BLOCK_VOXELS, *, progress=None, cancel=None):
        jobs.report(progress, 1, 4)
        started.set()
        deadline = time.monotonic() + 60
        while not (release is not None and release.is_set()) and time.monotonic() < deadline:
            jobs.check_cancelled(cancel, "Indexing the labels was cancelled.")
            time.sleep(0.01)
        return real(labels, block_voxels, progress=progress, cancel=cancel)

    monkeypatch.setattr(pr.LabelIndex, "build", classmethod(build))
    return started


def _merge_while_the_index_builds(make_napari_viewer, qtbot, crop, monkeypatch):
    """A Merge started on a fresh layer, its worker held in the index build."""
    import threading

    release = threading.Event()
    started = _blocking_build(monkeypatch, release)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    points = viewer.add_points([_point_on(crop, 37), _point_on(crop, 30)])
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.points.value = layer, points
    w()
    qtbot.waitUntil(started.is_set, timeout=30_000)
    return layer, points, w, release


@pytest.mark.threaded
def test_cancel_while_the_index_builds(make_napari_viewer, qtbot, crop, messages, monkeypatch):
    layer, points, w, release = _merge_while_the_index_builds(
        make_napari_viewer, qtbot, crop, monkeypatch
    )
    qtbot.waitUntil(lambda: w.jobs.progress.max == 4, timeout=5_000)  # 1 of 4 shown
    assert w.jobs.busy and w.jobs.cancel_button.enabled and not w.jobs.run_button.enabled
    w.jobs.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not w.jobs.busy, timeout=30_000)
    assert w.jobs.status.value == "Cancelled."
    assert np.array_equal(layer.data, crop) and len(compat.undo_items(layer)) == 0
    assert len(points.data) == 2  # nothing was done: the picks stay
    release.set()
    _run(qtbot, w)  # the layer is free again
    assert messages["info"][-1] == "merged [37] into 30"


@pytest.mark.threaded
def test_an_edit_is_refused_when_the_labels_changed_meanwhile(
    make_napari_viewer, qtbot, crop, messages, monkeypatch
):
    layer, _, w, release = _merge_while_the_index_builds(
        make_napari_viewer, qtbot, crop, monkeypatch
    )
    layer.paint((1, 92, 184), 44, refresh=False)  # the user paints while the job runs
    painted = np.asarray(layer.data).copy()
    assert (painted != crop).any()
    release.set()
    qtbot.waitUntil(lambda: not w.jobs.busy, timeout=30_000)
    assert "changed while the edit was computed" in messages["error"][-1]
    assert np.array_equal(layer.data, painted) and len(compat.undo_items(layer)) == 1
    assert pw.get_index(layer).equals(LabelIndex.build(painted))  # the index follows


def test_an_edit_that_changes_nothing_adds_no_undo_step(make_napari_viewer, qtbot, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    points = viewer.add_points([_point_on(crop, 17)])
    w = _dock(viewer, "Morph Labels")
    w.labels_layer.value, w.points.value, w.operation.value = layer, points, "fill holes"
    _run(qtbot, w)
    assert messages["info"] == ["fill holes: nothing changed"] and messages["error"] == []
    assert len(compat.undo_items(layer)) == 0
    layer.undo()  # nothing to undo: no error, nothing changes
    assert np.array_equal(layer.data, crop)


# --------------------------------------------------------------------------- napari conventions
def test_no_deprecation_warnings_from_our_code(make_napari_viewer, qtbot, crop, tmp_path):
    import warnings

    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer = make_napari_viewer()
        viewer.add_image(raw, name="raw")
        layer = viewer.add_labels(crop.copy(), scale=(5, 5, 5), units="nm")
        jump = _dock(viewer, "Jump to Label")
        jump.labels_layer.value, jump.label_id.value = layer, 37
        _run(qtbot, jump)
        measure = _dock(viewer, "Measure Labels")
        measure.labels_combo.value = layer
        _run(qtbot, measure)
        measure.on_row_clicked(0, 0)
        merge = _dock(viewer, "Merge Labels")
        merge.labels_layer.value = layer
        merge.new_points_button.clicked.emit()
    ours = [w for w in caught if "empanada_napari" in str(w.filename)]
    assert ours == [], [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]
    # Measure's columns carry the layer's unit.
    assert "volume (nm³)" in [
        measure.table_widget.horizontalHeaderItem(c).text()
        for c in range(measure.table_widget.columnCount())
    ]
    measure.csv_path.value = tmp_path / "m.csv"
    measure.export_button.clicked.emit()
    header = (tmp_path / "m.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("label,voxels,volume (nm³),z start (voxel)")


@pytest.fixture(scope="module")
def batch_result() -> np.ndarray:
    """The bundled model's 2D batch result on the real crop: ids restart in every slice."""
    from empanada_napari.core.inference.engine import Engine2D

    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:6]
    return Engine2D("default", "cpu").segment_slices(raw)


@pytest.mark.parametrize(
    "dock_name", ["Merge Labels", "Split Labels", "Delete Labels", "Morph Labels"]
)
def test_edits_on_a_2d_batch_result_stay_in_the_plane(
    make_napari_viewer, qtbot, batch_result, messages, dock_name
):
    # Issue 37: merging two ids of a 2D result with the default 3D mode relabelled unrelated
    # objects of other slices (the same ids name other objects there).
    labels = batch_result
    z = 3
    ids = [int(i) for i in np.unique(labels[z]) if i]
    shared = [i for i in ids if all((labels[k] == i).any() for k in range(len(labels)))]
    assert len(shared) >= 2  # the same ids name objects in every slice
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels.copy(), metadata={"empanada": {"mode": "2d"}})
    viewer.dims.set_point(0, z)
    picks = [_point_on(labels, shared[0], z=z)]
    if dock_name == "Merge Labels":
        picks.append(_point_on(labels, shared[1], z=z))
    points = viewer.add_points(picks)
    w = _dock(viewer, dock_name)
    w.labels_layer.value, w.points.value = layer, points
    assert w.mode.value == pw.PLANE  # chosen for a 2D result
    w.mode.value = "3D"  # and even when asked for 3D, the edit stays in the plane
    if dock_name == "Split Labels":
        w.min_distance.value = 3
    _run(qtbot, w)
    after = np.asarray(layer.data)
    others = np.arange(len(labels)) != z
    assert np.array_equal(after[others], labels[others]), (dock_name, messages)
    if dock_name != "Split Labels":  # a split may find one piece only: then nothing changes
        assert not np.array_equal(after[z], labels[z]), messages
