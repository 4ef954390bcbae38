"""Normalisation rule for every dtype, and refusal of bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.core.errors import InputError
from empanada_napari.core.preprocess import check_image, intensity_range, normalize

from ..conftest import DATA

MEAN, STD = 0.57571, 0.12765


@pytest.fixture(scope="module")
def em_slice() -> np.ndarray:
    return tifffile.imread(DATA / "lucchi_crop_raw.tif")[0]


def test_uint8_is_divided_by_255(em_slice):
    out = normalize(em_slice, MEAN, STD)
    assert out.dtype == np.float32 and out.shape == em_slice.shape
    np.testing.assert_allclose(out, (em_slice / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-5)
    assert intensity_range(em_slice) == (0.0, 255.0)


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: (a.astype(np.uint16) * 4 + 1000).astype(np.uint16),  # narrow-range uint16
        lambda a: a.astype(np.uint16) * 257,  # full-range uint16
        lambda a: a.astype(np.int32) * 1000 - 70000,  # negative int32
        lambda a: a.astype(np.float32) / 255.0,  # float in [0, 1]
        lambda a: a.astype(np.float64) * 3.7 - 12.0,  # arbitrary float
        lambda a: a.astype(np.int16) - 128,
    ],
    ids=["uint16-narrow", "uint16-full", "int32", "float32", "float64", "int16"],
)
def test_other_dtypes_match_their_uint8_original(em_slice, convert):
    # An affine change of the intensities (what a camera's bit depth or an export does) must
    # not change what the model sees: all map to the same robust [0, 1] values.
    reference = normalize(em_slice.astype(np.float32), MEAN, STD)
    out = normalize(convert(em_slice), MEAN, STD)
    np.testing.assert_allclose(out, reference, atol=1e-4)
    # ...and the picture is not dark: the robust range spans the data.
    unit = out * STD + MEAN
    assert unit.min() <= 0.01 and unit.max() >= 0.99


def test_narrow_uint16_is_not_black(em_slice):
    narrow = (em_slice.astype(np.uint16) + 1000).astype(np.uint16)
    unit = normalize(narrow, MEAN, STD) * STD + MEAN
    assert 0.3 < unit.mean() < 0.8  # the original plugin's /65535 gave ~0.02


def test_volume_range_is_shared_by_slices(em_slice):
    volume = np.stack([em_slice.astype(np.uint16), em_slice.astype(np.uint16) // 2])
    rng = intensity_range(volume)
    half = normalize(volume[1], MEAN, STD, value_range=rng) * STD + MEAN
    full = normalize(volume[0], MEAN, STD, value_range=rng) * STD + MEAN
    assert half.mean() < 0.6 * full.mean()  # the dim slice stays dimmer


def test_constant_image_is_valid_and_zero():
    out = normalize(np.full((32, 32), 7, np.uint16), MEAN, STD)
    np.testing.assert_array_equal(out, 0.0)  # the model's mean grey, like padding


def test_large_array_range_is_sampled():
    big = np.zeros((64, 256, 512), dtype=np.uint16)
    big[:, :, 256:] = 1000
    lo, hi = intensity_range(big)
    assert (lo, hi) == (0.0, 1000.0)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float32), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((4, 4), bool), "dtype bool"),
        (np.zeros((4, 4), np.complex64), "dtype complex64"),
        (np.zeros(10, np.uint8), "dimensions"),
        (np.zeros((2, 2, 8, 8), np.uint8), "dimensions"),
        (np.zeros((64, 64, 3), np.uint8), "RGB"),
    ],
)
def test_bad_images_are_refused(image, message):
    with pytest.raises(InputError, match=message):
        check_image(image, ndim=(2, 3))
        normalize(image, MEAN, STD)


def test_not_an_array():
    with pytest.raises(InputError, match="must be an array"):
        check_image([[1, 2], [3, 4]])


def test_input_not_mutated(em_slice):
    copy = em_slice.copy()
    normalize(em_slice, MEAN, STD)
    assert np.array_equal(copy, em_slice)
