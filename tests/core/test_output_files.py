"""Output files: permissions follow the user's umask, and a failed write leaves nothing.

Temporary files made with ``tempfile.mkstemp`` are always 0600, so results renamed from them
could not be read by the user's group whatever their umask said.
"""

from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files(path):
    """``path`` itself, or every file inside it (zarr stores, folders of slices)."""
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file()]
    return [path]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_write_labels_follows_umask(tmp_path, umask, suffix):
    from empanada_napari.core.io import write_labels

    labels = np.arange(24, dtype=np.uint32).reshape(2, 3, 4)
    out = write_labels(tmp_path / f"labels{suffix}", labels)
    files = _files(out)
    assert files
    for f in files:
        assert _mode(f) == 0o666 & ~umask, f
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("fmt, name", [("tiff", "x.tif"), ("tiff-slices", "x"), ("zarr", "x.zarr")])
def test_exporter_follows_umask(tmp_path, umask, fmt, name):
    from empanada_napari.core.io import export_array

    labels = np.arange(24, dtype=np.uint32).reshape(2, 3, 4)
    out = export_array(labels, tmp_path / name, fmt)
    files = _files(out)
    assert files
    for f in files:
        assert _mode(f) == 0o666 & ~umask, f
    if fmt == "tiff":  # a last axis of 4 is width, not RGBA samples
        import tifffile

        np.testing.assert_array_equal(tifffile.imread(out), labels)


def test_cli_output_follows_umask(tmp_path, toy_model_file, umask):
    import tifffile

    from empanada_napari.cli import main

    image = np.full((2, 64, 64), 200, np.uint8)
    image[:, 20:40, 20:40] = 30
    tifffile.imwrite(tmp_path / "in.tif", image)
    out = tmp_path / "out.tif"
    args = [str(tmp_path / "in.tif"), "-o", str(out), "--model", str(toy_model_file)]
    assert main(["segment", *args, "--no-progress"]) == 0
    assert _mode(out) == 0o666 & ~umask


@pytest.mark.parametrize("fmt, name", [("tiff", "x.tif"), ("zarr", "x.zarr")])
def test_failed_write_keeps_old_result_and_leaves_no_partial(tmp_path, fmt, name):
    from empanada_napari.core.errors import Cancelled
    from empanada_napari.core.io import export_array

    labels = np.arange(24, dtype=np.uint32).reshape(2, 3, 4)
    target = export_array(labels, tmp_path / name, fmt)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(Cancelled):  # stopped after the first of two slices
        export_array(labels + 1, target, fmt, overwrite=True, cancel=lambda: True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if fmt == "tiff":
        import tifffile

        np.testing.assert_array_equal(tifffile.imread(target), labels)
