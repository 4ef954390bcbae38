"""The ``empanada-napari`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import yaml

from empanada_napari.cli import main
from empanada_napari.core.ngff import open_labels

from .conftest import DATA, disk_image

CENTRES = [(33.5, 33.5), (33.5, 101.5), (121.5, 61.5)]


@pytest.fixture
def disks_tif(tmp_path):
    image, truth = disk_image((160, 140), CENTRES, 14)
    path = tmp_path / "disks.tif"
    tifffile.imwrite(path, np.stack([image, image[::-1]]))
    return path, truth


def test_segment_tif_to_tif_and_evaluate(toy_model_file, disks_tif, tmp_path, capsys):
    src, truth = disks_tif
    out = tmp_path / "labels.tif"
    code = main(
        [
            "segment",
            str(src),
            "-o",
            str(out),
            "--model",
            str(toy_model_file),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint32 and labels.shape == (2, 160, 140)
    assert len(np.unique(labels[0])) == len(CENTRES) + 1
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "toy" and report["device"] == "cpu"
    assert report["postprocessing"]["confidence_thr"] == 0.5  # no tuned settings: defaults
    gt = tmp_path / "gt.tif"
    tifffile.imwrite(gt, truth[None].astype(np.uint16))
    single = tmp_path / "single.tif"
    tifffile.imwrite(single, labels[:1])
    assert main(["evaluate", str(single), str(gt)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["f1@0.5"] == 1.0 and scores["n_gt"] == len(CENTRES)


def test_segment_zarr_output_and_2d_input(toy_model_file, disks_tif, tmp_path):

    src, _ = disks_tif
    out = tmp_path / "labels.zarr"
    assert (
        main(
            [
                "segment",
                str(src),
                "-o",
                str(out),
                "--model",
                str(toy_model_file),
                "--no-progress",
                "--batch-size",
                "1",
            ]
        )
        == 0
    )
    z = open_labels(out)
    assert z.dtype == np.uint32 and z.shape == (2, 160, 140)
    png = tmp_path / "slice.png"
    from skimage.io import imsave

    imsave(png, tifffile.imread(src)[0], check_contrast=False)
    out2 = tmp_path / "slice.tif"
    assert (
        main(
            ["segment", str(png), "-o", str(out2), "--model", str(toy_model_file), "--no-progress"]
        )
        == 0
    )
    assert np.array_equal(tifffile.imread(out2), np.asarray(z[0]))


def test_segment_errors_are_one_line(toy_model_file, disks_tif, tmp_path, capsys, caplog):
    src, _ = disks_tif
    out = tmp_path / "o.tif"
    out.write_bytes(b"precious")
    args = ["--model", str(toy_model_file), "--no-progress"]
    assert main(["segment", str(src), "-o", str(out), *args]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main(["segment", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "x.tif")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["segment", str(src), "-o", str(tmp_path / "x.png"), *args]) == 2
    assert "must end in" in capsys.readouterr().err
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((64, 64, 3), np.uint8))
    assert main(["segment", str(rgb), "-o", str(tmp_path / "y.tif"), *args]) == 2
    assert "RGB" in capsys.readouterr().err
    assert (
        main(["segment", str(src), "-o", str(tmp_path / "z.tif"), "--downsample", "3", *args]) == 2
    )
    assert "power of two" in capsys.readouterr().err
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a model")
    assert main(["segment", str(src), "-o", str(tmp_path / "w.tif"), "--model", str(broken)]) == 2
    assert "TorchScript" in capsys.readouterr().err
    assert not (tmp_path / "w.tif").exists()
    # A TIFF cut short (an interrupted copy): a plain sentence first, tifffile's words after.
    cut = tmp_path / "cut.tif"
    cut.write_bytes(src.read_bytes()[:300])
    assert main(["segment", str(cut), "-o", str(tmp_path / "v.tif"), *args]) == 2
    err = capsys.readouterr().err
    assert "not a readable TIF file" in err and "Details:" in err and "Traceback" not in err
    # tifffile's own cryptic log line about the broken tag is held back (not printed first).
    assert not [r for r in caplog.records if r.name == "tifffile"]
    assert not (tmp_path / "v.tif").exists()


def test_models_register_list_export_import(toy_model_file, tmp_path, capsys):
    config = {
        "class_names": {1: "mito"},
        "labels": [1],
        "thing_list": [1],
        "model": str(toy_model_file),
        "padding_factor": 16,
        "norms": {"mean": 0.57571, "std": 0.12765},
        "description": "Toy test model",
    }
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert main(["models", "register", "MyToy", str(cfg)]) == 0
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "MyToy" in listing and "MitoNet_v1_mini" in listing
    assert main(["models", "info", "MyToy"]) == 0
    assert "Toy test model" in capsys.readouterr().out
    archive = tmp_path / "toy.empanada"
    assert main(["models", "export", "MyToy", str(archive)]) == 0
    assert main(["models", "import", str(archive), "--name", "ToyCopy"]) == 0
    capsys.readouterr()
    assert main(["models", "remove", "MitoNet_v1"]) == 2  # built-ins stay
    assert "built-in" in capsys.readouterr().err
    assert main(["models", "info", "NoSuchModel"]) == 2


def test_segment_with_registered_name(toy_model_file, disks_tif, tmp_path):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": str(toy_model_file),
                "padding_factor": 16,
                "norms": {"mean": 0.57571, "std": 0.12765},
            }
        )
    )
    assert main(["models", "register", "ToyByName", str(cfg)]) == 0
    src, _ = disks_tif
    out = tmp_path / "named.tif"
    assert main(["segment", str(src), "-o", str(out), "--model", "ToyByName", "--no-progress"]) == 0
    assert tifffile.imread(out).max() > 0


def test_stack_and_ortho_modes(toy_model_file, disks_tif, tmp_path, capsys):
    from .core.test_stack import _balls

    src, _ = disks_tif
    volume, _ = _balls((36, 112, 120), [(17, 33.5, 33.5), (18, 33.5, 97.5), (17, 81.5, 57.5)], 15)
    vol = tmp_path / "balls.tif"
    tifffile.imwrite(vol, volume)
    args = ["--min-size", "200", "--model", str(toy_model_file), "--no-progress"]
    for mode in ("stack", "ortho"):
        out = tmp_path / f"{mode}.tif"
        assert main(["segment", str(vol), "-o", str(out), "--mode", mode, *args]) == 0
        labels = tifffile.imread(out)
        report = json.loads(capsys.readouterr().out)
        assert labels.shape == volume.shape and labels.dtype == np.uint32
        assert report["mode"] == mode and report["objects"] == labels.max() == 3
    one = tmp_path / "one.tif"
    tifffile.imwrite(one, tifffile.imread(src)[0])
    assert main(["segment", str(one), "-o", str(tmp_path / "x.tif"), "--mode", "ortho", *args]) == 2
    assert "needs a 3D volume" in capsys.readouterr().err


def test_evaluate_per_slice_with_binary_gt(tmp_path, capsys):
    gt = DATA / "lucchi_crop_mito_binary.tif"
    pred = tmp_path / "pred.tif"
    shutil.copy(DATA / "lucchi_crop_instances_2d.tif", pred)
    assert main(["evaluate", str(pred), str(gt), "--per-slice", "--cc"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["semantic_iou"] == 1.0 and scores["f1@0.5"] == 1.0
    assert scores["n_slices"] == 16


def test_console_script_and_core_is_gui_free():
    exe = shutil.which("empanada-napari")
    assert exe, "console script not installed"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "segment" in res.stdout
    code = (
        "import sys, empanada_napari.core, empanada_napari.core.inference.engine, "
        "empanada_napari.core.metrics, empanada_napari.core.io, empanada_napari.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'magicgui', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plugin_import_is_cheap():
    code = (
        "import sys, empanada_napari, empanada_napari.core, empanada_napari.core.models;"
        "assert 'torch' not in sys.modules, 'torch imported at plugin load'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_manifest_validates():
    npe2 = shutil.which("npe2")
    assert npe2
    res = subprocess.run(
        [npe2, "validate", "empanada-napari", "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_tifffile_log_is_held_only_when_the_read_fails(caplog):
    import logging
    import threading

    from empanada_napari.core.io import _tifffile_log_held

    log = logging.getLogger("tifffile")
    with _tifffile_log_held():
        log.warning("about a valid file")
    with pytest.raises(ValueError), _tifffile_log_held():
        log.error("about a broken tag")
        other = threading.Thread(target=log.warning, args=("from another thread",))
        other.start()
        other.join()
        raise ValueError("broken")
    assert [r.getMessage() for r in caplog.records if r.name == "tifffile"] == [
        "about a valid file",
        "from another thread",
    ]
