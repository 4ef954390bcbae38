"""A region of a big volume and the memory a block may use (issue 38): the region is checked
and cut without reading the volume; a block memory bounds the automatic blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from empanada_napari.core.errors import InputError
from empanada_napari.core.inference.blocks.plan import (
    BYTES_PER_VOXEL,
    block_memory,
    blocking,
    default_halo,
    grid_alignment,
    interactive_memory_gb,
    plan_blocks,
)
from empanada_napari.core.inference.region import (
    box_from_points,
    box_suffix,
    box_text,
    check_box,
    crop,
    is_whole,
)
from empanada_napari.core.settings import BlockSettings, StackSettings

BIG = (256, 768, 1024)  # the 201 MB volume


@pytest.mark.parametrize("gb", [1.0, 1.5, 2.0, 4.0])
@pytest.mark.parametrize("mode", ["stack", "ortho"])
def test_block_memory_bounds_every_padded_block(gb, mode):
    blocks = BlockSettings(memory_gb=gb)
    chunks, _ = blocking(BIG, mode, StackSettings(), blocks)
    plan = plan_blocks(BIG, chunks, default_halo(mode), grid_alignment(mode, "xy"))
    largest = max(math.prod(s.stop - s.start for s in b.padded) for b in plan)
    assert largest * BYTES_PER_VOXEL[mode] <= gb * 1e9
    assert len(plan) > 1  # the whole volume would need about 5 GB


def test_without_block_memory_a_volume_that_fits_half_the_ram_is_one_block(monkeypatch):
    from empanada_napari.core.inference.blocks import plan

    monkeypatch.setattr(plan, "total_memory", lambda: 24 * 10**9)
    assert blocking(BIG, "stack", StackSettings(), BlockSettings())[0] == BIG
    assert block_memory(BlockSettings()) is None  # default_chunks then asks the machine


def test_block_memory_on_a_cluster_is_no_more_than_a_workers_share():
    class Runner:
        def task_memory(self):
            return 2 * 10**9

    assert block_memory(BlockSettings(memory_gb=8), Runner()) == 2 * 10**9
    assert block_memory(BlockSettings(memory_gb=0.5), Runner()) == 10**9  # halved later


def test_the_interactive_default_is_a_share_of_the_machine(monkeypatch):
    from empanada_napari.core.inference.blocks import plan

    monkeypatch.setattr(plan, "total_memory", lambda: 24 * 10**9)
    assert interactive_memory_gb() == 1.5
    monkeypatch.setattr(plan, "total_memory", lambda: 0)  # unknown
    assert interactive_memory_gb() == 1.0


@pytest.mark.parametrize("bad", [0, 0.05, -1, float("nan"), True, "2"])
def test_block_memory_must_be_a_real_amount(bad):
    with pytest.raises(InputError, match="memory_gb"):
        BlockSettings(memory_gb=bad)


def test_region_boxes_are_clipped_and_empty_ones_refused():
    assert check_box((10, 20, 30), (slice(2, 50), slice(None), slice(-5, 7))) == (
        slice(2, 10),
        slice(0, 20),
        slice(0, 7),
    )
    with pytest.raises(InputError, match="outside the image"):
        check_box((10, 20, 30), (slice(12, 14), slice(None), slice(None)))
    with pytest.raises(InputError, match="3 ranges"):
        check_box((10, 20, 30), (slice(None),))
    assert is_whole((10, 20, 30), check_box((10, 20, 30), (slice(None),) * 3))


def test_a_rectangle_becomes_the_box_of_its_corners():
    corners = np.array([[3, 10.4, 5.2], [3, 40.6, 5.2], [3, 40.6, 25.0], [3, 10.4, 25.0]])
    box = box_from_points(corners, (8, 64, 64), axes=(1, 2))
    assert box == (slice(0, 8), slice(10, 41), slice(5, 25))
    assert box_text(box) == "z 0-7, y 10-40, x 5-24"
    assert box_suffix(box) == "z0-7_y10-40_x5-24"
    with pytest.raises(InputError, match="not finite"):
        box_from_points(np.full((2, 3), np.nan), (8, 64, 64), axes=(1, 2))


def test_crop_reads_nothing_from_a_zarr_volume(tmp_path):
    import zarr

    store = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=(40, 64, 64),
                            chunks=(8, 64, 64), dtype="uint8")  # fmt: skip
    store[:] = np.arange(40, dtype=np.uint8)[:, None, None]
    reads = []
    original = type(store).__getitem__

    def counting(self, key):
        out = original(self, key)
        if np.size(out):  # dask reads an empty corner once to learn the dtype
            reads.append(key)
        return out

    type(store).__getitem__ = counting
    try:
        region = crop(store, (slice(10, 20), slice(0, 32), slice(16, 48)))
        assert region.shape == (10, 32, 32) and not reads  # lazy: nothing read yet
        values = np.asarray(region)
    finally:
        type(store).__getitem__ = original
    assert values[:, 0, 0].tolist() == list(range(10, 20))
    view = crop(np.zeros((4, 8, 8)), (slice(1, 2), slice(0, 8), slice(0, 8)))
    assert isinstance(view, np.ndarray) and view.base is not None  # a view, no copy


def test_settings_messages_can_name_the_labels_on_screen():
    from empanada_napari.core.settings_meta import in_labels
    from empanada_napari.core.train_settings import TrainSettings

    with pytest.raises(InputError) as err:
        StackSettings(median_slices=4)
    assert in_labels(str(err.value), StackSettings).startswith("median slices must be odd")
    assert in_labels("lr must be > 0; lrx stays", TrainSettings) == (
        "learning rate must be > 0; lrx stays"  # whole words only
    )
