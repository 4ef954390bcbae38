"""The input's voxel size travels to the result (issue 38): read from ImageJ TIFFs and
OME-Zarr, recorded in zarr outputs of the command line, given back by the plugin's reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from empanada_napari.cli import main
from empanada_napari.core.ngff import is_group, open_labels, read_meta
from empanada_napari.core.placement import clean, read_placement
from empanada_napari.widgets._io import read_zarr

from .conftest import DATA, disk_image


@pytest.fixture
def imagej_tif(tmp_path):
    image, _ = disk_image((160, 140), [(40, 40), (100, 90)], 14)
    path = tmp_path / "em.tif"
    tifffile.imwrite(
        path,
        np.stack([image] * 4),
        imagej=True,
        resolution=(1 / 5.0, 1 / 5.0),  # pixels per unit: 5 nm pixels
        metadata={"spacing": 8.0, "unit": "nm", "axes": "ZYX"},
    )
    return path


def test_imagej_voxel_size_is_read(imagej_tif):
    placement = read_placement(imagej_tif, 3)
    assert placement["scale"] == pytest.approx([8.0, 5.0, 5.0])
    assert placement["units"] == ["nanometer"] * 3


@pytest.mark.parametrize("mode", ["2d", "stack"])
def test_cli_zarr_results_carry_the_input_voxel_size(toy_model_file, imagej_tif, tmp_path, mode):
    out = tmp_path / f"labels_{mode}.zarr"
    args = ["segment", str(imagej_tif), "-o", str(out), "--model", str(toy_model_file)]
    assert main([*args, "--mode", mode, "--no-progress"]) == 0
    ((data, kwargs, kind),) = read_zarr(str(out))
    assert kind == "labels" and data.shape == (4, 160, 140)
    assert kwargs["scale"] == pytest.approx((8.0, 5.0, 5.0))
    assert kwargs["units"] == ("nanometer",) * 3


def test_files_without_a_voxel_size_give_none(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 8, 8), np.uint8))
    assert read_placement(plain, 3) == {}
    assert read_placement(tmp_path / "missing.zarr", 3) == {}
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    assert read_placement(broken, 3) == {}


def test_only_sane_placements_are_kept():
    assert clean({"scale": [0, 1, 1]}, 3) == {}
    assert clean({"scale": [1, float("nan"), 1]}, 3) == {}
    assert clean({"scale": "5,5,5"}, 3) == {}
    assert clean({"scale": [2, 5, 5], "translate": [1, 2], "units": ["nm"] * 3}, 3) == {
        "scale": [2.0, 5.0, 5.0],
        "units": ["nm"] * 3,
    }


@pytest.mark.parametrize("mode", ["2d", "stack"])
def test_cli_zarr_results_are_ome_zarr_label_images(toy_model_file, imagej_tif, tmp_path, mode):
    """Any OME-Zarr reader (not only the plugin's) finds the labels and their voxel size: the
    raw NGFF metadata is checked here, not through the plugin's own reading code."""
    out = tmp_path / f"labels_{mode}.zarr"
    args = ["segment", str(imagej_tif), "-o", str(out), "--model", str(toy_model_file)]
    assert main([*args, "--mode", mode, "--no-progress"]) == 0
    attrs = json.loads((out / ".zattrs").read_text())
    assert "image-label" in attrs
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert [a.get("unit") for a in ms["axes"]] == ["nanometer"] * 3
    (level,) = ms["datasets"]
    assert level["coordinateTransformations"][0]["scale"] == pytest.approx([8.0, 5.0, 5.0])
    level0 = json.loads((out / level["path"] / ".zarray").read_text())
    assert level0["shape"] == [4, 160, 140] and level0["dtype"] == "<u4"
    assert attrs["empanada"]["status"] == "complete"


def _as_old_store(path):
    """Rewrite a result in the form of earlier versions: a plain array with the record."""
    import shutil

    import zarr

    old = path.with_name("old_" + path.name)
    level = open_labels(path)
    array = zarr.open_array(
        str(old), mode="w", shape=level.shape, chunks=level.chunks, dtype=level.dtype,
        fill_value=0, zarr_format=2,
    )  # fmt: skip
    array[...] = level[...]
    array.attrs["empanada"] = read_meta(path)
    shutil.rmtree(path)
    old.rename(path)
    assert not is_group(path)


def test_results_of_earlier_versions_resume_and_reopen(tmp_path, toy_model):
    """Outputs written before the OME-Zarr form (plain arrays) still resume and open."""
    import threading

    from empanada_napari.core.errors import Cancelled
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.slices import segment_slices_to

    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:4, :96, :96]
    engine = Engine2D(toy_model, batch_size=1)
    whole = tmp_path / "whole.zarr"
    segment_slices_to(whole, engine, raw)
    out = tmp_path / "labels.zarr"
    stop = threading.Event()
    with pytest.raises(Cancelled):
        segment_slices_to(
            out, engine, raw, progress=lambda d, t: d >= 2 and stop.set(), cancel=stop
        )
    _as_old_store(out)
    segment_slices_to(out, engine, raw, resume=True)
    assert not is_group(out) and read_meta(out)["status"] == "complete"
    np.testing.assert_array_equal(open_labels(out)[...], open_labels(whole)[...])
    ((data, kwargs, kind),) = read_zarr(str(out))
    assert kind == "labels" and kwargs["metadata"]["empanada"]["mode"] == "2d"
    np.testing.assert_array_equal(np.asarray(data), open_labels(whole)[...])


def test_the_reader_opens_finished_labels_writable_and_running_ones_read_only(tmp_path, toy_model):
    """A reopened result is proofread in place (the docks write into the store, with undo);
    one a run is still writing (or was killed writing) is not written into."""
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.slices import segment_slices_to
    from empanada_napari.core.ngff import update_meta

    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:2, :96, :96]
    out = tmp_path / "labels.zarr"
    segment_slices_to(out, Engine2D(toy_model, batch_size=1), raw)
    ((data, _, _),) = read_zarr(str(out))
    data[0, 0, 0] = 7
    assert open_labels(out)[0, 0, 0] == 7
    update_meta(out, status="running")
    ((data, _, _),) = read_zarr(str(out))
    with pytest.raises(Exception):  # noqa: B017, PT011 - zarr's own read-only error
        data[0, 0, 0] = 8
    assert open_labels(out)[0, 0, 0] == 7
