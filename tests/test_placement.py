"""The input's voxel size travels to the result (issue 38): read from ImageJ TIFFs and
OME-Zarr, recorded in zarr outputs of the command line, given back by the plugin's reader."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.cli import main
from empanada_napari.core.placement import clean, read_placement
from empanada_napari.widgets._io import read_zarr

from .conftest import disk_image


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
