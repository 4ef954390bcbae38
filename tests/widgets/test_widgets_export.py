"""Export Segmentations widget and the plugin's zarr reader/writer: round trips keep data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

DATA = Path(__file__).parents[1] / "data"
PLUGIN = "empanada-napari"


@pytest.fixture(scope="module")
def labels():
    return tifffile.imread(DATA / "lucchi_crop_instances_3d_cc.tif")[:5].astype(np.uint32) * 70001


def test_export_formats_round_trip(make_napari_viewer, qtbot, tmp_path, labels):
    import zarr

    viewer = make_napari_viewer()
    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:5]
    viewer.add_image(raw, name="raw")
    viewer.add_labels(labels, name="mito labels", scale=(2, 1, 1))
    small = viewer.add_labels(np.arange(12, dtype=np.uint8).reshape(3, 4), name="small")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export Segmentations")
    assert {ly.name for ly in widget.layers.value} == {"mito labels", "small"}
    assert not widget.jobs.run_button.enabled  # no folder yet
    widget.folder.value = tmp_path
    for fmt in ("tiff stack", "tiff per slice", "zarr"):
        widget.format.value = fmt
        assert widget.problem() is None
        widget.jobs.run_button.clicked()
        qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=30_000)
    stack = tifffile.imread(tmp_path / "mito_labels.tif")
    assert stack.dtype == np.uint32
    np.testing.assert_array_equal(stack, labels)
    slices = sorted((tmp_path / "mito_labels").glob("*.tif"))
    assert len(slices) == 5
    np.testing.assert_array_equal(np.stack([tifffile.imread(p) for p in slices]), labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "small.tif"), small.data)
    assert tifffile.imread(tmp_path / "small.tif").dtype == np.uint8
    # OME-Zarr: level "0" holds the data, NGFF metadata the scale (any OME-Zarr reader).
    group = zarr.open_group(str(tmp_path / "mito_labels.zarr"), mode="r")
    stored = group["0"]
    assert stored.dtype == np.uint32
    np.testing.assert_array_equal(stored[...], labels)
    (ms,) = group.attrs["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 1.0, 1.0]
    # Read back through napari and the plugin's reader: same data, dtype, name and scale.
    layer = viewer.open(tmp_path / "mito_labels.zarr", plugin=PLUGIN)[0]
    assert type(layer).__name__ == "Labels" and layer.name.startswith("mito labels")
    assert tuple(layer.scale) == (2, 1, 1)
    np.testing.assert_array_equal(np.asarray(layer.data), labels)
    assert widget.jobs.progress.value == widget.jobs.progress.max == 5 + 1
    # Existing files are not overwritten silently; images can be exported too.
    assert "exists" in widget.problem()
    widget.include_images.value = True
    widget.layers.value = [viewer.layers["raw"]]
    widget.jobs.run_button.clicked()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=30_000)
    image = viewer.open(tmp_path / "raw.zarr", plugin=PLUGIN)[0]
    assert type(image).__name__ == "Image"
    np.testing.assert_array_equal(np.asarray(image.data), raw)


def test_writer_and_reader_contributions(tmp_path, labels):
    import zarr

    from empanada_napari.widgets._io import get_reader, write_labels_zarr

    written = write_labels_zarr(str(tmp_path / "out"), labels, {"name": "x", "scale": [1, 1, 1]})
    assert written == [str(tmp_path / "out.zarr")]
    reader = get_reader(written[0])
    data, meta, kind = reader(written[0])[0]
    assert kind == "labels" and meta["name"] == "x"
    np.testing.assert_array_equal(data[...], labels)
    # Scale and units survive, through the NGFF metadata (5 nm voxels, 40 nm sections).
    nm = ["nanometer"] * 3
    scaled = write_labels_zarr(
        str(tmp_path / "nm.zarr"), labels, {"scale": [40, 5, 5], "units": nm}
    )
    _, meta, _ = get_reader(scaled[0])(scaled[0])[0]
    assert meta["scale"] == (40, 5, 5) and meta["units"] == tuple(nm)
    # Exports of earlier versions (a plain array with the plugin's attribute) still open.
    old = zarr.open_array(str(tmp_path / "old.zarr"), mode="w", shape=(2, 2), dtype="u4")
    old.attrs["empanada"] = {"kind": "labels", "name": "old", "scale": [3.0, 3.0]}
    _, meta, _ = get_reader(str(tmp_path / "old.zarr"))(str(tmp_path / "old.zarr"))[0]
    assert meta["scale"] == (3.0, 3.0)
    # Other zarr arrays, tiffs and missing paths are not ours.
    zarr.open_array(str(tmp_path / "foreign.zarr"), mode="w", shape=(2, 2), dtype="u1")
    assert get_reader(str(tmp_path / "foreign.zarr")) is None
    assert get_reader(str(tmp_path / "x.tif")) is None
    assert get_reader(str(tmp_path / "missing.zarr")) is None


def test_export_empty_selection_notifies(make_napari_viewer, monkeypatch, tmp_path):
    from empanada_napari.widgets import _common

    errors: list[str] = []
    monkeypatch.setattr(_common, "show_error", errors.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), np.uint8), name="img")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export Segmentations")
    widget.folder.value = tmp_path
    widget.run()
    assert "Labels layer" in errors[-1]
