"""Agreement with the original empanada-napari 1.2.4 (issue 19), when its venv exists.

Built by ``scripts/setup_original_venv.sh`` (default /work/venv-orig, or the folder in
``EMPANADA_ORIGINAL_VENV``); skipped otherwise. Same bundled model, same real held-out crop,
1.2.4's settings: the 2D foreground must be identical, voxel for voxel.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tifffile
from benchmarks import compare_original as co

from .conftest import DATA

VENV = Path(os.environ.get("EMPANADA_ORIGINAL_VENV", co.DEFAULT_VENV))


@pytest.fixture(scope="module")
def original_python():
    python = co.original_python(VENV)
    if python is None:
        pytest.skip(f"no empanada-napari 1.2.4 venv at {VENV} (scripts/setup_original_venv.sh)")
    return python


def test_2d_foreground_identical_to_1_2_4(original_python, tmp_path):
    image = tmp_path / "crop.tif"
    tifffile.imwrite(image, tifffile.imread(DATA / "lucchi_crop_raw.tif")[:3])
    home = tmp_path / "home"
    home.mkdir()
    config = co.original_config(tmp_path)
    ours = co.run_ours("2d", image, tmp_path / "ours.tif", tmp_path / "ours.json", warm=False)
    original = co.run_original(
        original_python, "2d", image, tmp_path / "orig.npy", tmp_path / "orig.json",
        config, home, warm=False,
    )  # fmt: skip
    assert ours["calls"] >= 1 and original["calls"] == 3
    agree = co.agreement(tmp_path / "ours.tif", tmp_path / "orig.npy")
    assert agree["foreground_voxels"] > 1000
    assert agree["foreground_differ"] == 0
    # 1.2.4 splits fragments with 8-connectivity, this project with 4: ids may differ there.
    assert agree["objects_original"] >= 3


def test_original_yaml_is_in_1_2_4_format(tmp_path):
    import yaml

    config = yaml.safe_load(co.original_config(tmp_path).read_text())
    for key in ("class_names", "labels", "thing_list", "model", "padding_factor", "norms"):
        assert key in config
    assert Path(config["model"]).is_file() and config["model_quantized"] is None
