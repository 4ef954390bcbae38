"""Picking training patches on real EM crops (tests/data) with the bundled model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.core.errors import Cancelled, InputError
from empanada_napari.core.training import doubt_maps, pick_patches, stack_patches
from empanada_napari.core.training.patches import patch_masks

from ...conftest import DATA


@pytest.fixture(scope="module")
def cdeep3m():
    raw = tifffile.imread(DATA / "cdeep3m_val_crop_raw.tif")
    binary = tifffile.imread(DATA / "cdeep3m_val_crop_mito_binary.tif")
    return raw, binary


@pytest.fixture(scope="module")
def lucchi():
    return tifffile.imread(DATA / "lucchi_crop_raw.tif")[:6, :160, :160]


def _region(image, patch):
    return image[tuple(slice(a, b) for a, b in zip(patch.start, patch.stop, strict=True))]


@pytest.mark.parametrize("strategy", ["random", "uncertain"])
def test_patches_keep_their_coordinates_and_model_prefill(cdeep3m, strategy):
    raw, _ = cdeep3m
    patches = pick_patches(raw, 3, 96, strategy=strategy, device="cpu", source="val", seed=1)
    assert len(patches) == 3
    for p in patches:
        assert p.image.shape == (96, 96) and p.labels.shape == (96, 96)
        assert p.labels.dtype == np.int32 and p.source == "val"
        # start/stop locate the patch in the source image exactly
        np.testing.assert_array_equal(_region(raw, p)[0], p.image)
        ids = np.unique(p.labels)
        np.testing.assert_array_equal(ids, np.arange(ids.size))  # ids 0..K, no gaps
    if strategy == "uncertain":
        scores = [p.score for p in patches]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0
        assert set(patches[0].doubt) == {"semantic", "centres", "linking", "flips"}
    else:  # random patches of one plane do not overlap
        for i, a in enumerate(patches):
            for b in patches[i + 1 :]:
                same = a.start[0] == b.start[0]
                apart = any(a.stop[k] <= b.start[k] or b.stop[k] <= a.start[k] for k in (1, 2))
                assert not same or apart


def test_uncertain_patches_are_where_the_model_hesitates_most(cdeep3m):
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.training.doubt import predict_plane, tile_score
    from empanada_napari.core.training.patches import _tiles

    raw, _ = cdeep3m
    best = pick_patches(raw[:1], 1, 64, strategy="uncertain", device="cpu", prefill="none")[0]
    engine = Engine2D("default", "cpu")
    labels, prob, ctr, flips = predict_plane(engine, raw[0], (0, 255), views=True)
    assert flips.shape == labels.shape and 0 < flips.mean() < 0.5
    maps = doubt_maps(labels, prob, ctr, flips=flips)
    boxes = [np.s_[y : y + 64, x : x + 64] for y, x in _tiles(raw.shape[1:], (64, 64))]
    totals = [
        tile_score({k: float(m[box].mean()) for k, m in maps.items()}, labels[box]) for box in boxes
    ]
    assert best.score == pytest.approx(max(totals), rel=1e-5)
    assert best.score > np.median(totals)


def test_tile_score_weights_doubt_by_predicted_foreground():
    from empanada_napari.core.training.doubt import EMPTY_WEIGHT, tile_score

    empty = np.zeros((10, 10), np.int32)
    full = np.ones((10, 10), np.int32)
    parts = {"semantic": 0.4, "centres": 0.2}
    assert tile_score(parts, empty) == pytest.approx(0.6 * EMPTY_WEIGHT)
    assert tile_score(parts, full) == pytest.approx(0.6)
    some = empty.copy()
    some[0, :5] = 1  # 5 % foreground: half-way up the weight
    assert tile_score(parts, empty) < tile_score(parts, some) < tile_score(parts, full)


def test_doubt_maps_flag_threshold_pixels_weak_centres_unlinked_objects_and_flips():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6] = 1
    labels[10:14, 10:14] = 2
    prob = np.where(labels > 0, 0.95, 0.05).astype(np.float32)
    prob[0, 0] = 0.55  # near the threshold
    ctr = np.zeros((20, 20), np.float32)
    ctr[4, 4] = 0.9  # object 1 well centred, object 2 weak
    ctr[12, 12] = 0.2
    neighbour = np.zeros_like(labels)
    neighbour[2:6, 2:6] = 7  # object 1 continues in the next plane, object 2 does not
    flips = np.zeros(labels.shape, bool)
    flips[5:7, 5:7] = True  # the flipped views disagree at object 1's corner
    maps = doubt_maps(labels, prob, ctr, neighbours=[neighbour], flips=flips)
    assert maps["semantic"].sum() == 1 and maps["semantic"][0, 0] == 1
    np.testing.assert_array_equal(maps["flips"] > 0, flips)
    assert "flips" not in doubt_maps(labels, prob, ctr)
    np.testing.assert_array_equal(maps["centres"] > 0, labels == 2)
    np.testing.assert_array_equal(maps["linking"] > 0, labels == 2)


def test_points_flipbooks_and_existing_labels(lucchi):
    truth = np.zeros(lucchi.shape, np.uint16)
    truth[:, 40:60, 40:60] = 5
    points = np.array([[3, 50.2, 49.7], [0, 150, 5]])
    patches = pick_patches(
        lucchi,
        strategy="points",
        points=points,
        patch_size=64,
        depth=3,
        prefill="labels",
        labels=truth,
    )
    assert [p.image.shape for p in patches] == [(3, 64, 64)] * 2
    first, second = patches
    assert first.start == (2, 18, 18) and first.stop == (5, 82, 82)  # centred on the point
    assert first.plane == 3
    assert second.start == (0, 96, 0)  # a point near the border: the patch stays inside
    np.testing.assert_array_equal(_region(lucchi, first), first.image)
    assert set(np.unique(first.labels)) == {0, 1} and first.labels[32, 32] == 1
    images, labels = stack_patches(patches)
    assert images.shape == labels.shape == (2, 3, 64, 64)
    assert labels[:, [0, 2]].max() == 0  # only the middle slice is annotated
    masks = patch_masks(labels, 3)
    np.testing.assert_array_equal(masks[0], first.labels)


def test_other_axis_and_dask_input(lucchi):
    da = pytest.importorskip("dask.array")
    lazy = da.from_array(lucchi, chunks=(2, 80, 80))
    patches = pick_patches(lazy, 2, 48, axis=2, prefill="none", seed=3)
    for p in patches:
        assert p.axis == 2 and p.image.shape == (6, 48)  # planes (z, y) along x
        np.testing.assert_array_equal(_region(lucchi, p)[:, :, 0], p.image)


def test_bad_requests_get_clear_errors(lucchi):
    with pytest.raises(InputError, match="strategy"):
        pick_patches(lucchi, strategy="best")
    with pytest.raises(InputError, match="outside the image"):
        pick_patches(lucchi, strategy="points", points=np.array([[99, 10, 10]]), prefill="none")
    with pytest.raises(InputError, match=r"\(N, 3\)"):
        pick_patches(lucchi, strategy="points", points=np.zeros((0, 3)), prefill="none")
    with pytest.raises(InputError, match="differ in shape"):
        pick_patches(lucchi, labels=np.zeros((2, 2), np.int32), prefill="labels")
    with pytest.raises(InputError, match="odd"):
        pick_patches(lucchi, depth=2, prefill="none")
    with pytest.raises(Cancelled):
        pick_patches(lucchi, 2, 64, prefill="none", cancel=lambda: True)


@pytest.mark.parametrize("strategy", ["random", "uncertain"])
def test_a_second_round_never_picks_the_same_place_and_keeps_to_the_slices(cdeep3m, strategy):
    raw, _ = cdeep3m
    stack = np.concatenate([raw, raw[::-1], raw])  # 6 planes of real SBEM
    kw = {"strategy": strategy, "device": "cpu", "seed": 0, "prefill": "none"}
    first = pick_patches(stack, 4, 96, **kw)
    second = pick_patches(stack, 4, 96, exclude=[p.info() for p in first], **kw)
    for a in second:
        for b in first:
            near = abs(a.plane - b.plane) <= 3
            overlap = all(
                s0 < t1 and t0 < s1
                for s0, s1, t0, t1 in zip(
                    a.start[1:], a.stop[1:], b.start[1:], b.stop[1:], strict=True
                )
            )
            assert not (near and overlap), (a.info(), b.info())
    kept = pick_patches(stack, 3, 96, planes=(4, 6), **kw)
    assert {p.plane for p in kept} <= {4, 5}
    with pytest.raises(InputError, match="not inside"):
        pick_patches(stack, 3, 96, planes=(4, 9), **kw)
