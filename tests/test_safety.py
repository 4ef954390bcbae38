"""Nothing lost, nothing run: inputs and previous results survive every misuse and failure.

Each test is one case of the hostile-user battery of issue 15 (docs/reliability.md): the
input as the output, --overwrite with a bad input, a killed 2D run, resume with another
input, numbers at the edges, a busy output, an unwritable folder.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import tifffile
import zarr

from empanada_napari.cli import main
from empanada_napari.core.errors import Cancelled, InputError
from empanada_napari.core.inference.chunked import segment_volume
from empanada_napari.core.inference.engine import Engine2D
from empanada_napari.core.inference.slices import segment_slices_to
from empanada_napari.core.ngff import open_labels, read_meta
from empanada_napari.core.output import output_lock

from .conftest import DATA

RAW = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:6, :96, :96]  # real FIB-SEM


def _zarr_input(path, data=RAW):
    array = zarr.create_array(str(path), shape=data.shape, chunks=(2, 96, 96), dtype=data.dtype)
    array[:] = data
    return path


@pytest.mark.parametrize("mode", ["2d", "stack"])
def test_output_equal_to_input_is_refused_and_the_input_survives(tmp_path, toy_model_file, mode):
    src = _zarr_input(tmp_path / "vol.zarr")
    for out in (src, src / "labels.zarr"):  # the store itself, or a store inside it
        args = ["segment", str(src), "-o", str(out), "--overwrite", "--mode", mode]
        assert main([*args, "--model", str(toy_model_file), "--no-progress"]) == 2
    np.testing.assert_array_equal(zarr.open_array(str(src), mode="r")[:], RAW)


def test_api_refuses_to_write_into_its_input(tmp_path, toy_model_file):
    src = zarr.open_array(str(_zarr_input(tmp_path / "vol.zarr")), mode="r")
    with pytest.raises(InputError, match="destroy the image"):
        segment_volume(src, toy_model_file, out=tmp_path / "vol.zarr", overwrite=True)
    np.testing.assert_array_equal(src[:], RAW)


@pytest.mark.parametrize("mode, suffix", [("2d", ".zarr"), ("stack", ".zarr"), ("2d", ".tif")])
def test_overwrite_with_a_bad_input_keeps_the_old_result(tmp_path, toy_model_file, mode, suffix):
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, RAW.astype(np.float32))
    out = tmp_path / f"labels{suffix}"
    common = ["--model", str(toy_model_file), "--mode", mode, "--no-progress", "-o", str(out)]
    assert main(["segment", str(good), *common]) == 0
    before = np.asarray(open_labels(out)[:] if suffix == ".zarr" else
                        tifffile.imread(out))  # fmt: skip
    assert before.max() > 0
    bad = RAW.astype(np.float32)
    bad[5, 10, 10] = np.nan  # one NaN in the last slice: found only when it is reached
    bad_path = tmp_path / "bad.tif"
    tifffile.imwrite(bad_path, bad)
    assert main(["segment", str(bad_path), *common, "--overwrite"]) == 2
    after = open_labels(out)[:] if suffix == ".zarr" else tifffile.imread(out)
    np.testing.assert_array_equal(after, before)
    if suffix == ".zarr":
        assert read_meta(out)["status"] == "complete"


def test_killed_2d_zarr_run_is_marked_and_resumes_to_the_same_labels(tmp_path, toy_model):
    engine = Engine2D(toy_model, batch_size=2)
    whole = segment_slices_to(tmp_path / "whole.zarr", engine, RAW)
    out = tmp_path / "labels.zarr"
    stop = threading.Event()

    def progress(done, total, info=None):
        if done >= 2:
            stop.set()

    with pytest.raises(Cancelled):
        segment_slices_to(out, engine, RAW, progress=progress, cancel=stop)
    meta = read_meta(out)
    assert meta["status"] == "running" and 0 < meta["slices_done"] < RAW.shape[0]
    seen = []
    summary = segment_slices_to(out, engine, RAW, resume=True, progress=lambda d, t: seen.append(d))
    assert seen[0] == meta["slices_done"]  # finished slices are not redone
    assert read_meta(out)["status"] == "complete"
    np.testing.assert_array_equal(open_labels(out)[:], open_labels(tmp_path / "whole.zarr")[:])
    assert summary["objects"] == whole["objects"] > 0


@pytest.mark.parametrize("mode", ["2d", "stack"])
def test_resume_with_a_different_input_is_refused(tmp_path, toy_model_file, mode):
    out = tmp_path / "labels.zarr"
    one, two = tmp_path / "one.tif", tmp_path / "two.tif"
    tifffile.imwrite(one, RAW)
    tifffile.imwrite(two, RAW[:, ::-1].copy())  # same shape and dtype, other content
    common = ["--model", str(toy_model_file), "--mode", mode, "--no-progress", "-o", str(out)]
    assert main(["segment", str(one), *common]) == 0
    assert main(["segment", str(two), *common, "--resume"]) == 2


def test_float64_at_extreme_scales_gives_the_labels_of_scale_one(toy_model):
    engine = Engine2D(toy_model)
    image = RAW[:2].astype(np.float64)
    reference = engine.segment_slices(image)
    assert reference.max() > 0
    for scale in (1e300, 1e-300):
        np.testing.assert_array_equal(engine.segment_slices(image * scale), reference)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mode", "stack", "--workers", "0"], "workers"),
        (["--mode", "stack", "--workers", "-2"], "workers"),
        (["--mode", "ortho", "--cluster-iou", "nan"], "cluster_iou_thr"),
        (["--key", "0"], "not a zarr"),
    ],
)
def test_absurd_options_are_refused(tmp_path, toy_model_file, capsys, extra, message):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    args = ["segment", str(src), "-o", str(tmp_path / "o.tif"), "--model", str(toy_model_file)]
    assert main([*args, "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_unwritable_places_are_refused_before_the_model_runs(tmp_path, toy_model_file, capsys,
                                                              monkeypatch):  # fmt: skip
    import empanada_napari.core.models.loading as loading

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for an output that cannot be written")

    monkeypatch.setattr(loading, "load_model", no_model)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a folder")
    cases = [tmp_path / "missing" / "o.tif", a_file]
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs a normal user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append(locked / "o.tif")
    for out in cases:
        args = ["segment", str(src), "-o", str(out), "--overwrite", "--no-progress"]
        assert main([*args, "--model", str(toy_model_file)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "must be a folder" in err


def test_a_second_run_on_a_busy_output_is_told_it_is_in_use(tmp_path, toy_model_file, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    out = tmp_path / "labels.zarr"
    args = ["segment", str(src), "-o", str(out), "--model", str(toy_model_file), "--no-progress"]
    with output_lock(out):  # another run holds the output
        assert main([*args, "--mode", "stack"]) == 2
    assert "in use by another run" in capsys.readouterr().err
    assert main([*args, "--mode", "stack"]) == 0  # and the lock is gone with that run


def test_ctrl_c_during_a_chunked_run_keeps_finished_blocks_for_resume(tmp_path, toy_model_file):
    # A real SIGINT to the CLI while it segments blocks in its own thread: it stops with
    # exit status 130 and a message, and resume finishes the same labels as a whole run.
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "in.tif"
    # 144 slices in 36 blocks along z: enough left after the second block that the run cannot
    # finish before the signal lands (with 12 blocks it once did, in a full suite run).
    volume = np.concatenate([RAW] * 24)
    tifffile.imwrite(src, volume)
    out = tmp_path / "labels.zarr"
    args = ["segment", str(src), "--model", str(toy_model_file), "--mode", "stack", "-o",
            str(out), "--chunks", "4,320,320", "--halo", "2,0,0", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "empanada_napari.cli", *args],
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background (`pytest &`) ignores SIGINT, and children inherit
        # that: the CLI would then never see the Ctrl-C this test sends.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    work = out / ".empanada-work"
    deadline = time.monotonic() + 120
    while not (work.exists() and len(list(work.glob("*.npz"))) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err
    assert read_meta(out)["status"] == "running"
    assert main([*args, "--resume"]) == 0
    whole = tmp_path / "whole.zarr"
    args[args.index("-o") + 1] = str(whole)
    assert main(args) == 0
    np.testing.assert_array_equal(open_labels(out)[:], open_labels(whole)[:])


@pytest.mark.parametrize("mode", ["2d", "stack"])
def test_overwrite_refuses_a_folder_the_tool_did_not_write(tmp_path, toy_model_file, mode, capsys):
    # Issue 35: `-o results.zarr --overwrite` where results.zarr is a folder of the user's
    # files used to delete it. Also a zarr store of someone else's (no empanada attribute).
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    user = tmp_path / "results.zarr"
    user.mkdir()
    (user / "notes.txt").write_text("three months of work")
    (user / "sub").mkdir()
    (user / "sub" / "cells.csv").write_text("1,2\n")
    foreign = _zarr_input(tmp_path / "other.zarr")
    for out in (user, foreign):
        args = ["segment", str(src), "-o", str(out), "--overwrite", "--mode", mode]
        assert main([*args, "--model", str(toy_model_file), "--no-progress"]) == 2
        assert "Will not overwrite" in capsys.readouterr().err
    assert (user / "notes.txt").read_text() == "three months of work"
    assert (user / "sub" / "cells.csv").exists()
    np.testing.assert_array_equal(zarr.open_array(str(foreign), mode="r")[:], RAW)
    # The library refuses the same way (the widgets write through it).
    with pytest.raises(InputError, match="did not write"):
        segment_volume(RAW, toy_model_file, out=user, overwrite=True)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "sub"]


def test_overwrite_replaces_only_labels_files(tmp_path, toy_model_file):
    from empanada_napari.core.io import check_replaceable, export_array, write_labels

    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    image = tmp_path / "raw_copy.tif"  # somebody's image, not labels
    tifffile.imwrite(image, RAW)
    common = ["--model", str(toy_model_file), "--no-progress", "--overwrite"]
    assert main(["segment", str(src), "-o", str(image), *common]) == 2
    np.testing.assert_array_equal(tifffile.imread(image), RAW)
    with pytest.raises(InputError, match="not a labels file"):
        write_labels(image, np.zeros((4, 4), np.uint32), overwrite=True)
    # The tool's own outputs (and labels TIFFs of other tools) are replaced as before.
    ours = tmp_path / "labels.tif"
    assert main(["segment", str(src), "-o", str(ours), *common]) == 0
    assert main(["segment", str(src), "-o", str(ours), *common]) == 0
    theirs = tmp_path / "theirs.tif"
    tifffile.imwrite(theirs, np.ones((4, 4), np.int32))
    check_replaceable(theirs)
    # An export of an image carries the tool's mark, and a folder of exported slices too.
    exported = export_array(RAW, tmp_path / "exp.tif", "tiff", kind="image")
    check_replaceable(exported)
    slices = export_array(RAW, tmp_path / "slices", "tiff-slices", kind="image")
    export_array(RAW, slices, "tiff-slices", kind="image", overwrite=True)
    (slices / "mine.txt").write_text("x")
    with pytest.raises(InputError, match="did not write"):
        export_array(RAW, slices, "tiff-slices", kind="image", overwrite=True)
    assert (slices / "mine.txt").exists()
