"""Augmentations for other microscopes (blur, gamma, noise) and balanced multi-dataset sampling."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.core.errors import InputError
from empanada_napari.core.training import MixedDataset, PatchDataset, random_augment

from ...conftest import DATA

MEAN, STD = 0.57571, 0.12765
STILL = dict(rotate=False, flips=False, scale=(1.0, 1.0), brightness=0, contrast=0)


@pytest.fixture(scope="module")
def lucchi():
    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:2]
    instances = tifffile.imread(DATA / "lucchi_crop_instances_2d.tif")[:2]
    return list(raw), list(instances)


def _normalised(raw: np.ndarray) -> np.ndarray:
    return ((raw.astype(np.float32) / 255.0) - MEAN) / STD


def test_appearance_changes_the_image_never_the_mask(lucchi):
    raw, instances = lucchi
    image, mask = _normalised(raw[0]), instances[0].astype(np.int32)
    changed = 0
    for seed in range(40):
        out, out_mask = random_augment(
            image,
            mask,
            np.random.default_rng(seed),
            blur=(0.5, 2.0),
            gamma=(0.5, 2.0),
            noise=0.05,
            **STILL,
        )
        np.testing.assert_array_equal(out_mask, mask)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        changed += not np.allclose(out, image)
    # Each of the three is drawn half the time: 7 calls in 8 change the image.
    assert 28 <= changed < 40


def test_gamma_acts_on_unit_intensities(lucchi):
    raw, instances = lucchi
    image, mask = _normalised(raw[0]), instances[0].astype(np.int32)
    expected = ((raw[0].astype(np.float32) / 255.0) ** 2 - MEAN) / STD
    outcomes = set()
    for seed in range(10):
        out, _ = random_augment(image, mask, np.random.default_rng(seed), gamma=(2.0, 2.0), **STILL)
        if np.allclose(out, image):
            outcomes.add("kept")
        else:
            np.testing.assert_allclose(out, expected, atol=1e-4)
            outcomes.add("gamma")
    assert outcomes == {"kept", "gamma"}
    # gamma 2 darkens mid-grey mitochondria more than anything: contrast to the bright
    # background grows, the direction SBEM's dark mitochondria lie in.
    fg = mask > 0
    assert (expected[~fg].mean() - expected[fg].mean()) > (image[~fg].mean() - image[fg].mean())


def test_blur_smooths_and_noise_is_bounded():
    flat = np.zeros((64, 64), dtype=np.float32)
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)
    mask = np.zeros((64, 64), dtype=np.int32)
    stds = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        noisy, _ = random_augment(flat, mask, rng, noise=0.05, **STILL)
        stds.append(float(noisy.std()))
        blurred, _ = random_augment(checker, mask, rng, blur=(1.0, 2.0), **STILL)
        assert blurred.std() < 0.1 or np.array_equal(blurred, checker)
    assert max(stds) <= 0.05 / STD * 1.1 and sum(s > 0 for s in stds) >= 5
    assert min(stds) == 0.0  # drawn half the time


@pytest.mark.parametrize(
    "kw", [{"blur": (-1.0, 1.0)}, {"blur": (2.0, 1.0)}, {"gamma": (0.0, 2.0)}, {"noise": -0.1}]
)
def test_bad_appearance_options_are_refused(kw):
    image, mask = np.zeros((8, 8), np.float32), np.zeros((8, 8), np.int32)
    with pytest.raises(InputError):
        random_augment(image, mask, np.random.default_rng(0), **kw)


def test_patch_dataset_passes_the_new_options(lucchi):
    raw, instances = lucchi
    aug = {"blur": (0.0, 1.0), "gamma": (0.7, 1.4), "noise": 0.02, "scale": (0.5, 2.0)}
    ds = PatchDataset(raw, instances, patch_size=96, augment=aug, samples_per_epoch=4)
    assert ds.augment_kwargs["norm_mean"] == pytest.approx(MEAN)
    image, targets = ds[0]
    assert image.shape == (1, 96, 96) and targets["sem"].shape == (96, 96)


def _tiny(raw, instances, n: int) -> PatchDataset:
    return PatchDataset(raw[:1] * n, instances[:1] * n, patch_size=32, augment=False)


def test_mixed_dataset_balances_sources_whatever_their_size(lucchi):
    raw, instances = lucchi
    big, small = _tiny(raw, instances, 30), _tiny(raw, instances, 2)
    mix = MixedDataset([big, small], samples_per_epoch=2000, seed=3)
    picks = np.array([mix.source_of(i)[0] for i in range(len(mix))])
    assert abs((picks == 1).mean() - 0.5) < 0.04  # not 2/32 as plain concatenation gives
    inner = [mix.source_of(i)[1] for i in range(len(mix)) if picks[i] == 0]
    assert max(inner) < len(big) and len(set(inner)) == len(big)
    weighted = MixedDataset([big, small], [3, 1], samples_per_epoch=2000, seed=3)
    share = np.mean([weighted.source_of(i)[0] == 0 for i in range(2000)])
    assert abs(share - 0.75) < 0.04


def test_mixed_dataset_is_reproducible_and_changes_with_the_epoch(lucchi):
    raw, instances = lucchi
    a = PatchDataset(raw, instances, patch_size=48, samples_per_epoch=6)
    b = PatchDataset(raw[::-1], instances[::-1], patch_size=48, samples_per_epoch=6)
    mix = MixedDataset([a, b], samples_per_epoch=10, seed=1)
    first = [mix.source_of(i) for i in range(10)]
    x0, t0 = mix[0]
    again, _ = mix[0]
    assert np.array_equal(x0.numpy(), again.numpy()) and x0.shape == (1, 48, 48)
    assert "sem" in t0
    mix.set_epoch(1)
    assert a.epoch == b.epoch == 1
    assert [mix.source_of(i) for i in range(10)] != first
    with pytest.raises(IndexError):
        mix.source_of(10)


@pytest.mark.parametrize(
    "kw",
    [
        {"weights": [1.0]},
        {"weights": [1.0, -1.0]},
        {"weights": [0.0, 0.0]},
        {"samples_per_epoch": 0},
        {"seed": -1},
    ],
)
def test_mixed_dataset_refuses_bad_settings(lucchi, kw):
    raw, instances = lucchi
    sources = [_tiny(raw, instances, 1), _tiny(raw, instances, 1)]
    kw = {"samples_per_epoch": 4} | kw
    with pytest.raises(InputError):
        MixedDataset(sources, **kw)
    with pytest.raises(InputError):
        MixedDataset([], samples_per_epoch=4)


def test_tone_curve_is_monotonic_and_keeps_black_and_white():
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[None].repeat(4, 0)
    image, mask = (ramp - MEAN) / STD, np.zeros(ramp.shape, np.int32)
    curves = []
    for seed in range(12):
        out, _ = random_augment(image, mask, np.random.default_rng(seed), tone=3, **STILL)
        unit = out[0] * STD + MEAN
        assert np.all(np.diff(unit) >= -1e-5)  # the grey-level order of structures is kept
        assert unit[0] == pytest.approx(0.0, abs=1e-5) and unit[-1] == pytest.approx(1.0, abs=1e-5)
        curves.append(unit)
    changed = [not np.allclose(c, ramp[0], atol=1e-4) for c in curves]
    assert 3 <= sum(changed) < 12  # drawn half the time
    drawn = [tuple(np.round(c, 3)) for c, ch in zip(curves, changed, strict=True) if ch]
    assert len(set(drawn)) == len(drawn)  # a new curve every time


def test_contrast_range_draws_factors_beyond_the_symmetric_option():
    image = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), np.int32)
    kw = dict(STILL, contrast=(0.5, 2.0))
    factors = []
    for seed in range(30):
        out, _ = random_augment(image, mask, np.random.default_rng(seed), **kw)
        factors.append(float(out.std() / image.std()))
    assert 0.5 - 1e-4 <= min(factors) and max(factors) <= 2.0 + 1e-4
    assert max(factors) > 1.5 and min(factors) < 0.7
    with pytest.raises(InputError):
        random_augment(image, mask, np.random.default_rng(0), contrast=1.5)
