"""The third hostile-input round (issue 35): every bad input gets one clear sentence.

Paths and names, configs, tracebacks that become one-line errors (the CLI exits 2 and writes
nothing), silently wrong results and requests that would run for minutes. Each case is
listed, with what it gets, in docs/reliability.md.
"""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from empanada_napari.cli import main
from empanada_napari.core.errors import InputError, ModelError, ModelFileError
from empanada_napari.core.inference.chunked import segment_volume
from empanada_napari.core.inference.engine import Engine2D
from empanada_napari.core.io import read_image, write_labels
from empanada_napari.core.models.loading import load_model
from empanada_napari.core.models.registry import get_registry
from empanada_napari.core.training import pick_patches

from .conftest import DATA, build_toy_model

RAW = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:6, :96, :96]  # real FIB-SEM
NORMS = {"mean": 0.57571, "std": 0.12765}


def _within(seconds: float, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``'s result, or its exception, if it ends within ``seconds``;
    a hang fails the test instead of hanging the suite."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


def _segment(args: list[str], toy_model_file) -> list[str]:
    return ["segment", *args, "--model", str(toy_model_file), "--no-progress"]


def _listing(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------- paths and names


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_training_names_are_checked_like_registered_names(tmp_path, capsys, command):
    (tmp_path / "data").mkdir()
    out = tmp_path / "deep" / "out"
    args = [command, "--data", str(tmp_path / "data"), "--name", "../../x", "--output", str(out)]
    assert main(args) == 2
    assert "invalid model name '../../x'" in capsys.readouterr().err
    assert _listing(tmp_path) == ["data"]  # nothing written, inside --output or above it


def test_training_output_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "F").write_text("mine")
    args = ["train", "--data", str(tmp_path / "data"), "--name", "ok", "--output"]
    assert main([*args, str(tmp_path / "F")]) == 2
    assert "--output" in capsys.readouterr().err
    assert (tmp_path / "F").read_text() == "mine"


def test_input_that_is_a_pipe_is_refused_instead_of_blocking(tmp_path, toy_model_file, capsys):
    fifo = tmp_path / "in.tif"
    os.mkfifo(fifo)
    try:
        with pytest.raises(InputError, match="not a regular file"):
            _within(20, read_image, fifo)
        out = tmp_path / "o.tif"
        assert _within(20, main, _segment([str(fifo), "-o", str(out)], toy_model_file)) == 2
        assert "not a regular file" in capsys.readouterr().err and not out.exists()
    finally:  # a reader blocked by the unfixed code is released
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_input_linked_to_itself_is_refused(tmp_path, toy_model_file, capsys):
    loop = tmp_path / "loop.tif"
    loop.symlink_to(loop.name)
    with pytest.raises(InputError, match="leads back to itself"):
        read_image(loop)
    assert main(_segment([str(loop), "-o", str(tmp_path / "o.tif")], toy_model_file)) == 2
    assert "leads back to itself" in capsys.readouterr().err


# --------------------------------------------------------------------------- configs


def _laughs(levels: int = 9) -> str:
    """A YAML "billion laughs": 9**levels strings from a few hundred bytes of aliases."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        lines.append(f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 9)}]")
    return "\n".join(lines) + f"\ndescription: *l{levels - 1}\n"


def _config_text(model, extra: str = "") -> str:
    return yaml.safe_dump({"model": str(model), "norms": NORMS}) + extra


def test_billion_laughs_config_is_refused_at_registration(tmp_path, toy_model_file, capsys):
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text(_config_text(toy_model_file, _laughs()))
    assert _within(20, main, ["models", "register", "Y", str(cfg)]) == 2
    assert "too large" in capsys.readouterr().err
    assert "Y" not in get_registry().names()


@pytest.mark.parametrize(
    "extra, message",
    [
        ("recursive: &r [*r]\n", "refers to itself"),
        ("deep: " + "[" * 40 + "]" * 40 + "\n", "32 levels"),
        ("padding: " + "x" * (1 << 20) + "\n", "larger than 1024 kB"),
    ],
)
def test_recursive_deep_or_huge_configs_are_refused(tmp_path, toy_model_file, extra, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_config_text(toy_model_file, extra))
    with pytest.raises(ModelError, match=message):
        get_registry().register("Y", cfg)


def test_a_broken_registered_config_never_hangs_listing(toy_model_file, capsys):
    registry = get_registry()
    registry.register("Good", {"model": str(toy_model_file), "norms": NORMS})
    folder = registry.user_models_dir / "Bad"
    folder.mkdir()  # as if registered by an older version, or edited by hand
    (folder / "Bad.yaml").write_text(_config_text(toy_model_file, _laughs()))
    names = [e.name for e in _within(20, registry.entries)]
    assert "Good" in names and "Bad" not in names
    assert _within(20, main, ["models", "list"]) == 0
    assert "Good" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"padding_factor": 2**40}, "'padding_factor'"),
        ({"norms": {"mean": 0.5, "std": 1e-300}}, "'norms.std'"),
        ({"norms": {"mean": 1e300, "std": 0.1}}, "'norms.mean'"),
        ({"labels": [2**40], "thing_list": [2**40]}, "'labels'"),
        ({"model_size_mb": 1e300}, "'model_size_mb'"),
        ({"inference_settings": {"min_distance_object_centers": 2**40}}, "min_distance"),
        ({"inference_settings": {"min_area": 2**40}}, "min_area"),
    ],
)
def test_numbers_in_configs_are_bounded_at_registration_and_load(tmp_path, toy_model_file,
                                                                 change, key):  # fmt: skip
    config = {"model": str(toy_model_file), "norms": NORMS, **change}
    with pytest.raises(ModelError, match=key):
        get_registry().register("Y", config)
    cfg = tmp_path / "y.yaml"
    cfg.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match=key):
        load_model(cfg, "cpu")


def test_a_module_with_an_absurd_padding_factor_is_refused(tmp_path):
    import torch

    path = tmp_path / "huge_padding.pth"  # no YAML beside it: the module's own value
    torch.jit.save(build_toy_model(padding_factor=2**40), str(path))
    with pytest.raises(ModelError, match="padding_factor"):
        load_model(path, "cpu")


def test_file_url_model_is_checked_when_registered(tmp_path, toy_model_file, capsys):
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    cfg = tmp_path / "y.yaml"
    cfg.write_text(yaml.safe_dump({"model": secret.as_uri(), "norms": NORMS}))
    assert main(["models", "register", "Y", str(cfg)]) == 2
    assert "registered" not in capsys.readouterr().out
    assert "Y" not in get_registry().names()
    missing = {"model": (tmp_path / "none.pth").as_uri(), "norms": NORMS}
    with pytest.raises(ModelFileError, match="not found"):
        get_registry().register("Y", missing)
    # A real model file at a file:// URL is still used in place.
    entry = get_registry().register("Z", {"model": toy_model_file.as_uri(), "norms": NORMS})
    assert get_registry().fetch(entry) == toy_model_file


# --------------------------------------------------------------------------- one-line errors


def test_a_corrupt_zarr_chunk_is_one_sentence(tmp_path, toy_model_file, capsys):
    src = tmp_path / "in.zarr"
    array = zarr.create_array(str(src), shape=RAW.shape, chunks=(2, 96, 96), dtype=RAW.dtype)
    array[:] = RAW
    (src / "c" / "1" / "0" / "0").write_bytes(b"not zstd at all")
    for mode in ("2d", "stack"):
        out = tmp_path / f"o_{mode}.tif"
        assert main(_segment([str(src), "-o", str(out), "--mode", mode], toy_model_file)) == 2
        assert "Could not read" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("mode, suffix", [("2d", ".tif"), ("2d", ".zarr"), ("stack", ".tif")])
def test_a_volume_larger_than_memory_is_refused_before_it_starts(tmp_path, toy_model_file,
                                                                 capsys, monkeypatch, mode,
                                                                 suffix):  # fmt: skip
    import empanada_napari.core.memory as memory

    monkeypatch.setattr(memory, "total_memory", lambda: 16 << 30)
    src = tmp_path / "huge.zarr"  # metadata only: 4 x 100000 x 100000, no chunk written
    zarr.create_array(str(src), shape=(4, 100_000, 100_000), chunks=(1, 4096, 4096), dtype="u1")
    out = tmp_path / f"labels{suffix}"
    assert main(_segment([str(src), "-o", str(out), "--mode", mode], toy_model_file)) == 2
    err = capsys.readouterr().err
    assert "GiB of memory" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_and_silent_schedulers_are_one_sentence(tmp_path, toy_model_file, capsys,
                                                    monkeypatch):  # fmt: skip
    from empanada_napari.core.inference.blocks import executor

    monkeypatch.setattr(executor, "CONNECT_TIMEOUT", 1.0)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    out = tmp_path / "o.zarr"
    common = [str(src), "-o", str(out), "--mode", "stack", "--scheduler"]
    assert main(_segment([*common, "garbage"], toy_model_file)) == 2
    assert "not a scheduler address" in capsys.readouterr().err
    address = f"tcp://127.0.0.1:{_free_port()}"
    assert _within(60, main, _segment([*common, address], toy_model_file)) == 2
    assert f"No dask scheduler answered at {address}" in capsys.readouterr().err
    assert not out.exists()


def test_patches_larger_than_memory_are_refused(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    args = ["train", "--data", str(tmp_path / "data"), "--name", "ok", "--patch-size", "100000"]
    assert main(args) == 2  # beyond the setting's own bound
    assert "patch_size must be an integer 64..2048" in capsys.readouterr().err
    # Within the bounds but beyond this machine's memory: the estimate, before any reading.
    big = ["--patch-size", "2048", "--batch-size", "256"]
    assert main([*args[:-2], *big]) == 2
    assert "GiB of memory" in capsys.readouterr().err


def test_points_csv_with_a_header_or_garbage(tmp_path, toy_model_file, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    napari_csv = tmp_path / "p.csv"  # what napari saves from a Points layer
    napari_csv.write_text("index,axis-0,axis-1,axis-2\n0,2.0,40.0,50.0\n")
    args = ["patches", "pick", str(src), str(tmp_path / "ds"), "--strategy", "points"]
    common = ["--patch-size", "32", "--model", str(toy_model_file), "--no-progress"]
    assert main([*args, "--points", str(napari_csv), *common]) == 0
    capsys.readouterr()
    (image_file,) = (tmp_path / "ds").rglob("images/*.tiff")
    patch = tifffile.imread(image_file)  # the patch centred on the point, from its plane
    np.testing.assert_array_equal(patch, RAW[2, 24:56, 34:66])
    garbage = tmp_path / "g.csv"
    garbage.write_text("2,40,50\nfoo,bar\n")
    assert main([*args, "--points", str(garbage), *common]) == 2
    assert "Line 2 of" in capsys.readouterr().err


def test_write_labels_without_labels_names_the_argument(tmp_path):
    with pytest.raises(TypeError, match="'labels'"):
        write_labels(tmp_path / "o.tif", None)
    assert not (tmp_path / "o.tif").exists()


# --------------------------------------------------------------------------- silently wrong


def test_64_bit_and_denormal_images_give_the_labels_of_the_ordinary_range(toy_model):
    engine = Engine2D(toy_model)
    image = RAW[:2]
    reference = engine.segment_slices(image.astype(np.uint16))
    assert reference.max() > 0
    near_2_62 = image.astype(np.uint64) + np.uint64(2**62)
    below_zero = image.astype(np.int64) - np.int64(2**62)
    denormal = image.astype(np.float64) * 1e-320
    for extreme in (near_2_62, below_zero, denormal):
        np.testing.assert_array_equal(engine.segment_slices(extreme), reference)


@pytest.mark.parametrize(
    "mode, extra, flag",
    [
        ("2d", ["--axis", "xz"], "--axis"),
        ("2d", ["--median-slices", "5"], "--median-slices"),
        ("stack", ["--pixel-vote", "3"], "--pixel-vote"),
        ("ortho", ["--axis", "yz"], "--axis"),
    ],
)
def test_options_the_mode_ignores_are_refused(tmp_path, toy_model_file, capsys, mode, extra,
                                              flag):  # fmt: skip
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    out = tmp_path / "o.tif"
    assert main(_segment([str(src), "-o", str(out), "--mode", mode, *extra], toy_model_file)) == 2
    assert f"{flag} does nothing in --mode {mode}" in capsys.readouterr().err
    assert not out.exists()


def test_patch_size_beyond_the_image_is_refused_or_said(tmp_path, toy_model_file, capsys):
    plane, stack = tmp_path / "plane.tif", tmp_path / "stack.tif"
    tifffile.imwrite(plane, RAW[0])
    tifffile.imwrite(stack, RAW)
    common = ["-n", "2", "--patch-size", "100000", "--model", str(toy_model_file)]
    args = ["patches", "pick", str(plane), str(tmp_path / "ds"), *common, "--no-progress"]
    assert main(args) == 2
    assert "Only 1 patch(es) of 96 x 96 pixels" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
    args = ["patches", "pick", str(stack), str(tmp_path / "ds"), *common, "--no-progress"]
    assert main([*args, "--strategy", "random"]) == 0
    assert "the patches are 96 x 96 pixels" in capsys.readouterr().err


# --------------------------------------------------------------------------- looks like a hang


def test_more_patches_than_the_image_holds_are_refused_at_once(tmp_path, toy_model_file, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, RAW)
    for n in ("1000000", "100"):
        args = ["patches", "pick", str(src), str(tmp_path / "ds"), "-n", n, "--patch-size", "32"]
        args += ["--strategy", "random", "--model", str(toy_model_file), "--no-progress"]
        assert _within(30, main, args) == 2
        assert "patches" in capsys.readouterr().err
    with pytest.raises(InputError, match="Only 54 patch"):  # 6 planes of 3 x 3 patches
        _within(30, pick_patches, RAW, 55, 32, strategy="random", prefill="none")
    picks = _within(30, pick_patches, RAW, 54, 32, strategy="random", prefill="none", seed=1)
    assert 0 < len(picks) <= 54


@pytest.mark.parametrize(
    "chunks, halo, message",
    [
        ((1, 1, 1), None, "thinner than 32 pixels"),
        ((1, 8, 8), None, "thinner than 32 pixels"),
        ((1, 32, 32), (8, 32, 32), "every voxel about"),
    ],
)
def test_tiny_blocks_are_refused_with_an_estimate(tmp_path, toy_model_file, chunks, halo,
                                                  message):  # fmt: skip
    with pytest.raises(InputError, match=message):
        _within(30, segment_volume, RAW, toy_model_file, mode="stack", chunks=chunks, halo=halo,
                out=tmp_path / "o.zarr")  # fmt: skip
    assert not (tmp_path / "o.zarr").exists()
