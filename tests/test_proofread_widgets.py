"""Proofreading dock widgets in a headless napari viewer, on the real Lucchi crop."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.core.proofread import LabelIndex
from empanada_napari.widgets import proofreading as pw

from .conftest import DATA

PLUGIN = "empanada-napari"


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_instances_3d_cc.tif")


@pytest.fixture
def messages(monkeypatch) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    for kind in got:
        monkeypatch.setattr(pw, f"show_{kind}", got[kind].append)
    return got


def _dock(viewer, name: str):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    widget.reset_choices()
    return widget


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


def test_merge_3d_and_undo(make_napari_viewer, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    points = viewer.add_points([_point_on(crop, 37), _point_on(crop, 30)])
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.points.value, w.mode.value = layer, points, "3D"
    w()
    expected = np.where(crop == 37, 30, crop)
    assert np.array_equal(layer.data, expected), messages
    assert messages["info"] == ["merged [37] into 30"] and layer.selected_label == 30
    box = LabelIndex.build(crop).union_box([37])
    outside = np.ones(crop.shape, bool)
    outside[box] = False
    assert np.array_equal(layer.data[outside], crop[outside])
    _assert_undo_redo(layer, crop, expected)


def test_merge_along_a_shapes_line_in_one_plane(make_napari_viewer, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    viewer.dims.set_point(0, 8)
    line = viewer.add_shapes([np.array([[8, 200, 110], [8, 120, 150]])], shape_type="line")
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.points.value, w.shapes.value, w.mode.value = layer, None, line, pw.PLANE
    w()
    expected = crop.copy()
    expected[8][crop[8] == 30] = 17
    assert np.array_equal(layer.data, expected), messages
    _assert_undo_redo(layer, crop, expected)


def test_bad_picks_give_clear_messages(make_napari_viewer, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.points.value, w.shapes.value = layer, None, None
    w()
    assert "no Points layer" in messages["error"][-1]
    points = viewer.add_points([[5, 5, 5], _point_on(crop, 30)])
    w.reset_choices()
    w.points.value = points
    w()
    assert "background" in messages["error"][-1]
    points.data = np.array([[5, 500, 5], _point_on(crop, 30)])
    w()
    assert "outside the labels" in messages["error"][-1]
    points.data = np.array([_point_on(crop, 30)])
    w()
    assert "at least two" in messages["error"][-1]
    d = _dock(viewer, "Delete Labels")
    d.labels_layer.value, d.points.value = layer, None
    d()
    assert "no Points layer" in messages["error"][-1]
    assert np.array_equal(layer.data, crop) and len(layer._undo_history) == 0


def test_split_with_markers_and_undo(make_napari_viewer, crop, messages):
    merged = np.where(crop == 37, 30, crop).astype(crop.dtype)
    merged[:, 150:152, 150:230][merged[:, 150:152, 150:230] == 0] = 30
    viewer = make_napari_viewer()
    layer = viewer.add_labels(merged.copy())
    points = viewer.add_points([[8, 120, 150], [8, 190, 255]])
    w = _dock(viewer, "Split Labels")
    w.labels_layer.value, w.points.value = layer, points
    w.use_points_as_markers.value, w.mode.value = True, "3D"
    w()
    assert messages["info"] == ["split 30: new labels [45]"], messages
    after = np.asarray(layer.data).copy()
    assert set(np.unique(after[merged == 30])) == {30, 45}
    assert np.array_equal(after != 0, merged != 0)
    assert (after[crop == 37] == 30).mean() > 0.95 and (after[crop == 30] == 45).mean() > 0.9
    assert np.array_equal(after[merged != 30], merged[merged != 30])
    _assert_undo_redo(layer, merged, after)


def _delete_in_plane(viewer, layer, truth, plane, label_id, messages):
    """Delete ``label_id`` in ``plane`` through the widget; check the result and undo/redo."""
    viewer.dims.set_point(0, plane)
    points = viewer.add_points([_point_on(truth, label_id, z=plane)])
    w = _dock(viewer, "Delete Labels")
    w.labels_layer.value, w.points.value, w.mode.value = layer, points, pw.PLANE
    w()
    expected = truth.copy()
    expected[plane][truth[plane] == label_id] = 0
    assert np.array_equal(np.asarray(layer.data), expected), messages
    _assert_undo_redo(layer, truth, expected)


def test_delete_in_plane_on_zarr_layer(make_napari_viewer, crop, messages, tmp_path):
    import zarr

    z = zarr.create_array(tmp_path / "l.zarr", shape=crop.shape, chunks=(4, 64, 64), dtype="u2")
    z[:] = crop
    viewer = make_napari_viewer()
    layer = viewer.add_labels(z)
    _delete_in_plane(viewer, layer, crop, 3, 37, messages)
    assert np.array_equal(z[:], crop)  # the zarr store itself was edited and restored


def test_delete_on_dask_layer_and_2d_plus_t(make_napari_viewer, messages):
    import dask.array as da

    stack = tifffile.imread(DATA / "lucchi_crop_instances_2d.tif")  # t, y, x
    viewer = make_napari_viewer()
    layer = viewer.add_labels(da.from_array(stack.copy(), chunks=(2, 160, 160)))
    _delete_in_plane(viewer, layer, stack, 6, 2, messages)


def test_morph_dilate_picked(make_napari_viewer, crop, messages):
    from skimage.segmentation import expand_labels

    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    viewer.dims.set_point(0, 8)
    points = viewer.add_points([_point_on(crop, 17, z=8)])
    w = _dock(viewer, "Morph Labels")
    w.labels_layer.value, w.points.value = layer, points
    w.operation.value, w.radius.value, w.mode.value = "dilate", 2, pw.PLANE
    w()
    expected = crop.copy()
    grown = expand_labels(np.where(crop[8] == 17, 17, 0), 2)
    expected[8][(crop[8] == 0) & (grown == 17)] = 17
    assert np.array_equal(layer.data, expected), messages
    _assert_undo_redo(layer, crop, expected)


def test_index_follows_painting_and_undo(make_napari_viewer, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    assert pw.get_index(layer).count(44) == 218
    layer.paint((0, 92, 184), 44, refresh=False)  # a brush stroke outside the widgets
    painted = np.asarray(layer.data).copy()
    assert pw.get_index(layer).equals(LabelIndex.build(painted))
    points = viewer.add_points([_point_on(crop, 44), _point_on(crop, 30)])
    w = _dock(viewer, "Merge Labels")
    w.labels_layer.value, w.points.value, w.mode.value = layer, points, "3D"
    w()
    assert not (layer.data == 44).any()
    layer.undo()  # the merge
    layer.undo()  # the brush stroke
    assert np.array_equal(layer.data, crop)
    assert pw.get_index(layer).equals(LabelIndex.build(crop))


def test_jump_and_next_available(make_napari_viewer, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy(), scale=(2, 1, 1))
    viewer.dims.set_point(0, 20)
    w = _dock(viewer, "Jump to Label")
    w.labels_layer.value, w.label_id.value = layer, 44
    w()
    assert layer.selected_label == 44, messages
    assert viewer.dims.point[0] == 0  # label 44 exists only in plane 0
    centre = np.array(viewer.camera.center)[-2:]
    assert np.abs(centre - np.argwhere(crop == 44)[:, 1:].mean(0)).max() < 3
    w.label_id.value = 45
    w()
    assert "not found" in messages["error"][-1]
    n = _dock(viewer, "Find Next Available Label")
    n.labels_layer.value = layer
    n.class_id.value, n.label_divisor.value = 0, 0
    n()
    assert layer.selected_label == 45
    n.class_id.value, n.label_divisor.value = 0, 40
    n()
    assert layer.selected_label == 38
    n.class_id.value = 2
    n()
    assert layer.selected_label == 81


def test_filter_into_new_layer(make_napari_viewer, crop, messages):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(crop.copy())
    w = _dock(viewer, "Filter Labels")
    w.labels_layer.value, w.min_size.value = layer, 1000
    w()
    assert messages["info"] == ["removed 1 label(s)"]
    new = viewer.layers[f"{layer.name} filtered"]
    assert np.array_equal(new.data, np.where(crop == 44, 0, crop))
    assert np.array_equal(layer.data, crop)  # the source layer is untouched


def test_measure_table_sort_click_and_csv(make_napari_viewer, crop, messages, tmp_path):
    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")
    viewer = make_napari_viewer()
    viewer.add_image(raw, name="raw", scale=(5, 5, 5))
    layer = viewer.add_labels(crop.copy(), scale=(5, 5, 5))
    w = _dock(viewer, "Measure Labels")
    w.labels_combo.value = layer
    w.image_combo.value = viewer.layers["raw"]
    w.divisor.value = 10
    w.measure_button.clicked.emit()
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
