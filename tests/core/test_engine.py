"""The 2D engine with a toy TorchScript model whose right answer is known."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from empanada_napari.core.errors import Cancelled, InputError, ModelFileError
from empanada_napari.core.inference.engine import Engine2D, InferenceSettings, segment_2d
from empanada_napari.core.metrics import instance_scores
from empanada_napari.core.models.loading import load_model

from ..conftest import disk_image

# Disk centres on grid-cell centres (4i + 1.5) so the toy heat-map has a single peak each.
CENTRES = [(33.5, 33.5), (33.5, 101.5), (121.5, 61.5), (149.5, 181.5), (45.5, 201.5)]


@pytest.fixture(scope="module")
def disks():
    return disk_image((200, 230), CENTRES, 14)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"fine_boundaries": True},
        {"downsample": 2},
        {"downsample": 2, "fine_boundaries": True},
        {"tile_size": 96, "tile_overlap": 32},
        {"batch_size": 1},
        {"tta": True},
        {"tta": True, "tile_size": 96, "tile_overlap": 32},
    ],
    ids=["coarse", "fine", "down2", "down2-fine", "tiled", "bs1", "tta", "tta-tiled"],
)
def test_disks_are_recovered(toy_model, disks, params):
    image, truth = disks
    labels = Engine2D(toy_model, **params).segment(image)
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert set(np.unique(labels)) == {0, *range(10001, 10001 + len(CENTRES))}
    scores = instance_scores(labels, truth)
    # The toy's semantic map is at 1/4 of its input, so at downsample 2 edges are coarser.
    assert scores["f1@0.75" if params.get("downsample", 1) == 1 else "f1@0.5"] == 1.0
    assert scores["semantic_iou"] > (0.9 if params.get("downsample", 1) == 1 else 0.8)


def test_tiled_equals_untiled(toy_model, disks):
    image, _ = disks
    big = np.tile(image, (2, 2))
    whole = Engine2D(toy_model).segment(big)
    tiled = Engine2D(toy_model, tile_size=160, tile_overlap=64).segment(big)
    assert np.array_equal(whole, tiled)
    assert len(np.unique(whole)) == 4 * len(CENTRES) + 1


def test_flip_averaging_is_flip_equivariant_on_real_em():
    # With test-time flips, segmenting a mirrored image gives the mirrored labels (up to
    # relabelling): the offsets' signs are undone correctly for every flip.
    import tifffile

    from empanada_napari.core.metrics import same_partition

    from ..conftest import DATA

    image = tifffile.imread(DATA / "lucchi_crop_raw.tif")[0]
    engine = Engine2D("default", "cpu", tta=True)
    labels = engine.segment(image, value_range=(0, 255))
    assert labels.max() % 10000 >= 3  # several mitochondria in this crop
    for axis in (0, 1):
        mirrored = engine.segment(np.flip(image, axis).copy(), value_range=(0, 255))
        assert same_partition(np.flip(mirrored, axis), labels)


def test_kept_views_are_the_flipped_outputs_and_change_nothing_else():
    # keep_views (the "most uncertain" picking's doubt under flips) adds the four views'
    # semantic probabilities; the outputs stay those of the settings, bit for bit.
    import tifffile

    from ..conftest import DATA

    image = tifffile.imread(DATA / "lucchi_crop_raw.tif")[0][:100, :90]  # padded to the grid
    for tta in (False, True):
        engine = Engine2D("default", "cpu", tta=tta)
        batch = engine.normalize(image[None], (0, 255))
        plain, kept = engine.infer(batch), engine.infer(batch, keep_views=True)
        assert "sem_views" not in plain.extra
        for key in ("sem_prob", "ctr_hmp", "offsets"):
            assert torch.equal(getattr(plain, key), getattr(kept, key))
        views = kept.extra["sem_views"]
        assert views.shape == (4, *plain.sem_prob.shape)
        if tta:
            torch.testing.assert_close(views.mean(0), plain.sem_prob)
        else:
            assert torch.equal(views[0], plain.sem_prob)
        # view 1 is the vertically flipped image's output flipped back
        flipped = Engine2D("default", "cpu").infer(np.ascontiguousarray(batch[:, ::-1]))
        h = image.shape[0]
        torch.testing.assert_close(
            views[1][..., :h, :], torch.flip(flipped.sem_prob[..., :h, :], (-2,))
        )


def test_batched_equals_single(toy_model, disks):
    image, _ = disks
    stack = np.stack([image, np.flipud(image), np.fliplr(image)])
    engine = Engine2D(toy_model, batch_size=3)
    batched = engine.segment_slices(stack)
    for i in range(3):
        assert np.array_equal(batched[i], Engine2D(toy_model).segment(stack[i]))


def test_cpu_batches_hold_about_one_large_image_of_pixels_two_at_least(toy_model):
    from empanada_napari.core.inference.engine import (
        CPU_BATCH_PIXELS,
        CPU_MAX_BATCH,
        CPU_MIN_BATCH,
    )

    engine = Engine2D(toy_model, device="cpu")
    assert engine.default_batch_size() == CPU_MIN_BATCH  # no slice size
    assert engine.default_batch_size((768, 1024)) == engine.default_batch_size((2048, 2048)) == 2
    assert engine.default_batch_size((165, 1024)) == 4  # a thin ortho view of a whole volume
    assert engine.default_batch_size((512, 512)) == 3
    assert engine.default_batch_size((256, 256)) == engine.default_batch_size((1, 1))
    assert engine.default_batch_size((1, 1)) == CPU_MAX_BATCH
    assert CPU_BATCH_PIXELS // (165 * 768) == engine.default_batch_size((5, 165, 768))
    # The setting always wins.
    assert Engine2D(toy_model, device="cpu", batch_size=1).default_batch_size((32, 32)) == 1


def test_label_divisor_semantic_only_and_fill_holes(toy_model, disks):
    image, truth = disks
    labels = Engine2D(toy_model, label_divisor=1000).segment(image)
    assert labels.max() == 1000 + len(CENTRES)
    sem = Engine2D(toy_model, semantic_only=True).segment(image)
    assert set(np.unique(sem)) == {0, 1}
    holed = image.copy()
    holed[28:40, 28:40] = 200  # a bright hole in the middle of the first disk
    plain = Engine2D(toy_model, fine_boundaries=True).segment(holed)
    filled = Engine2D(toy_model, fine_boundaries=True, fill_holes=True).segment(holed)
    assert (plain[32:36, 32:36] == 0).all()
    assert (filled[32:36, 32:36] == filled[20, 33]).all() and filled[20, 33] > 0


def test_progress_and_cancel_keep_finished_slices(toy_model, disks):
    image, _ = disks
    stack = np.stack([image] * 5)
    calls = []
    out = np.zeros(stack.shape, np.uint32)
    cancel = threading.Event()

    def progress(done, total):
        calls.append((done, total))
        if done >= 2:
            cancel.set()

    engine = Engine2D(toy_model, batch_size=2)
    with pytest.raises(Cancelled, match="after 2 of 5"):
        engine.segment_slices(stack, out=out, progress=progress, cancel=cancel)
    assert calls == [(2, 5)]
    assert out[:2].max() > 0 and out[2:].max() == 0  # finished slices are kept


def test_segment_2d_accepts_stacks_and_dask(toy_model, disks):
    import dask.array as da

    image, _ = disks
    stack = da.from_array(np.stack([image, image]), chunks=(1, 100, 100))
    labels = segment_2d(stack, toy_model)
    assert isinstance(labels, np.ndarray) and labels.shape == stack.shape
    assert np.array_equal(labels[0], labels[1])


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((64, 64, 3), np.uint8), "RGB"),
        (np.zeros((2, 2, 64, 64), np.uint8), "dimensions"),
        (np.full((64, 64), np.nan, np.float32), "NaN"),
        (np.zeros((64, 64), bool), "bool"),
    ],
)
def test_bad_images(toy_model, bad, message):
    with pytest.raises(InputError, match=message):
        segment_2d(bad, toy_model)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"downsample": 3}, "power of two"),
        ({"confidence_thr": 1.5}, "confidence_thr"),
        ({"tile_size": 100, "tile_overlap": 64}, "tile_size"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings(toy_model, params, message):
    with pytest.raises(InputError, match=message):
        Engine2D(toy_model, **params)


def test_empty_and_constant_images(toy_model):
    assert Engine2D(toy_model).segment(np.full((50, 70), 255, np.uint8)).max() == 0
    assert Engine2D(toy_model).segment(np.zeros((50, 70), np.float32)).max() == 0


def test_model_cache_and_corrupt_file(toy_model_file, tmp_path):
    assert load_model(toy_model_file, "cpu") is load_model(toy_model_file, "cpu")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(toy_model_file.read_bytes()[:500])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_model(bad, "cpu")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.pth", "cpu")


def test_model_that_cannot_batch_falls_back_to_single(tmp_path, disks):
    from ..conftest import build_toy_model

    class FirstOnly(torch.nn.Module):
        """Mimics a per-image PointRend: only the first image of a batch is right."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.padding_factor = 16

        def forward(self, x: torch.Tensor, render_steps: int = 2, interpolate_ins: bool = True):
            out = self.inner(x[:1], render_steps, interpolate_ins)
            return {k: v.expand(x.shape[0], -1, -1, -1) for k, v in out.items()}

    path = tmp_path / "first_only.pth"
    torch.jit.save(torch.jit.script(FirstOnly(build_toy_model())), str(path))
    model = load_model(path, "cpu")
    assert not model.supports_batch
    image, _ = disks
    stack = np.stack([image, np.flipud(image)])
    labels = Engine2D(model, batch_size=4).segment_slices(stack)
    assert not np.array_equal(labels[0], labels[1])
    assert np.array_equal(labels[1], Engine2D(model).segment(stack[1]))


def test_settings_round_trip():
    s = InferenceSettings(confidence_thr=0.3, downsample=4)
    assert InferenceSettings(**s.to_dict()) == s


@pytest.mark.parametrize(
    "architecture, kwargs",
    [
        ("panoptic_deeplab_pr", {"encoder": "resnet18"}),
        ("panoptic_bifpn_pr", {"encoder": "resnet18", "fpn_channels": 32, "fpn_layers": 1}),
        ("panoptic_lite", {"width": 8, "decoder_channels": 16}),
    ],
)
def test_every_architecture_runs_through_save_load_and_the_engine(architecture, kwargs, tmp_path):
    import tifffile

    from empanada_napari.core.models.architectures import build_model

    from ..conftest import DATA

    torch.manual_seed(0)
    scripted = torch.jit.script(build_model(architecture, **kwargs).eval())
    path = tmp_path / f"{architecture}.pth"
    torch.jit.save(scripted, str(path))
    model = load_model(path, "cpu")
    assert model.supports_batch and model.padding_factor == scripted.padding_factor
    stack = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:2, :150, :170]  # odd sizes: padding
    for params in ({}, {"fine_boundaries": True}, {"downsample": 2}):
        engine = Engine2D(model, batch_size=2, **params)
        labels = engine.segment_slices(stack)
        assert labels.shape == stack.shape and labels.dtype == np.uint32
        # Batched and one-at-a-time give the same labels; a second run is deterministic.
        assert np.array_equal(labels[1], Engine2D(model, **params).segment(stack[1]))
        assert np.array_equal(labels, engine.segment_slices(stack))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([[[0, 7], [7, 10001]], [[3, 3], [0, 0]]], dtype=np.uint32),  # ids per slice
        np.array([[0, 2**40], [5, 5]], dtype=np.int64),  # huge ids: np.unique's path
        np.array([[-1, 0], [5, 0]], dtype=np.int32),  # negative: np.unique's path
        np.array([[0.5, 0.0]]),  # floats: np.unique's path
        np.zeros((2, 0, 4), dtype=np.uint32),  # empty
        np.array([3, 0, 2], dtype=np.uint16),  # one row
    ],
)
def test_count_objects_counts_distinct_ids_per_slice(labels):
    from empanada_napari.core.inference.slices import count_objects

    planes = labels.reshape(-1, labels.shape[-1]) if labels.ndim == 1 else labels
    planes = planes[None] if planes.ndim == 2 else planes
    expected = sum(np.count_nonzero(np.unique(p)) for p in planes)
    assert count_objects(labels) == expected
