"""Image validation and intensity normalisation for MitoNet-family models.

The rule (documented in the README and docs/inference.md):

* ``uint8`` images are divided by 255, exactly as MitoNet was trained.
* Every other integer or floating-point dtype (uint16, int16, int32, float32, ...) is rescaled
  to [0, 1] from a robust intensity range: the 0.05th and 99.95th percentiles of the image (of
  the whole volume for a stack, estimated on a strided sample of at most ~4 M voxels), then
  clipped. A narrow-range uint16 image (e.g. values 1,000..1,400) therefore looks the same to
  the model as its uint8 conversion, where the original plugin divided by 65,535 and saw black.
* 64-bit images are rescaled in float64, and 64-bit integers beyond float64's exact integers
  (values near 2**62) get an exact range (a ``Fraction``, offsets from the minimum taken as
  integers), so they, like float64 images of denormal values, look to the model like the same
  image at an ordinary range.
* The [0, 1] values are then standardised with the model's ``norms``: ``(v - mean) / std``.

``bool``, complex and object arrays, NaN/inf values, empty arrays and arrays with the wrong
number of dimensions are refused with an :class:`~empanada_napari.core.errors.InputError`.
A constant image is valid: it becomes the model's mean grey (like padding) and segments to
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from numbers import Rational

import numpy as np

from .errors import InputError
from .io import read_region

#: Percentiles used for the robust intensity range of non-uint8 images.
ROBUST_PERCENTILES = (0.05, 99.95)
#: At most this many voxels are read to estimate an intensity range.
MAX_RANGE_SAMPLES = 1 << 22


def describe(image) -> str:
    """Short ``shape dtype`` description for error messages."""
    return f"shape {tuple(image.shape)} and dtype {image.dtype}"


def check_image(image, ndim: Sequence[int] = (2, 3), what: str = "image") -> None:
    """Raise :class:`InputError` if ``image`` cannot be segmented.

    Checks the number of dimensions (``ndim`` lists the accepted ones), the dtype and the
    size; it does not read the data (NaN/inf are caught when each slice is normalised).
    """
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise InputError(f"The {what} must be an array, got {type(image).__name__}.")
    dtype = np.dtype(image.dtype)
    # A (H, W, 3|4) array would otherwise pass as a stack of 3-pixel-wide slices.
    looks_rgb = image.ndim >= 3 and image.shape[-1] in (3, 4) and min(image.shape[-3:-1]) > 4
    if image.ndim not in ndim or looks_rgb:
        hint = ""
        if looks_rgb:
            hint = (
                " It looks like an RGB(A) image: convert it to a single grey channel"
                " (EM images are greyscale)."
            )
        raise InputError(
            f"The {what} must be greyscale with {' or '.join(map(str, ndim))} dimensions, "
            f"but it has {describe(image)}.{hint}"
        )
    if dtype == np.bool_ or dtype.kind not in "uif":
        raise InputError(
            f"The {what} has dtype {dtype}; expected an integer or floating-point greyscale "
            "image (a boolean mask or label layer is not an EM image)."
        )
    if any(s == 0 for s in image.shape):
        raise InputError(f"The {what} is empty ({describe(image)}).")


def _strided_sample(image, max_samples: int = MAX_RANGE_SAMPLES) -> np.ndarray:
    """Read an evenly strided subset of ``image`` (numpy, dask or zarr) of bounded size."""
    size = math.prod(image.shape)
    # Equal stride along every axis, at least 1, so a tall stack is sampled in z too.
    step = 1 if size <= max_samples else math.ceil((size / max_samples) ** (1.0 / image.ndim))
    region = tuple(slice(None, None, step) for _ in image.shape)
    return read_region(image, region, "the voxels sampled for its intensity range")


def check_finite(values: np.ndarray, what: str = "image") -> None:
    """Raise :class:`InputError` if a floating-point array holds NaN or inf."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise InputError(
            f"The {what} contains {n_bad} NaN or infinite value(s); replace them (e.g. with "
            "numpy.nan_to_num) before segmenting."
        )


def intensity_range(
    image, percentiles: tuple[float, float] = ROBUST_PERCENTILES
) -> tuple[float, float]:
    """Return the ``(low, high)`` intensities that map to 0 and 1 (see the module rule)."""
    check_image(image, ndim=(2, 3, 4, 5))
    if np.dtype(image.dtype) == np.uint8:
        return 0.0, 255.0
    sample = _strided_sample(image)
    check_finite(sample)
    if sample.dtype.kind in "iu" and sample.dtype.itemsize == 8 and not _exact_in_float64(sample):
        return _integer_range(sample, percentiles)
    low, high = np.percentile(sample, percentiles)
    return float(low), float(high)


def _exact_in_float64(values: np.ndarray) -> bool:
    """Whether every integer in ``values`` is exact in float64 (magnitudes up to 2**53)."""
    limit = 1 << 53
    return values.size == 0 or (-limit <= int(values.min()) and int(values.max()) <= limit)


def _offsets(values: np.ndarray, base: int) -> np.ndarray:
    """``values - base`` (``base`` <= every value) as float64, exact whatever the magnitudes:
    subtracted as 64-bit integers first (uint64 holds any difference of two int64s)."""
    u64 = (
        values.astype(np.uint64, copy=False) if values.dtype.kind == "u" else values.view(np.uint64)
    )
    return (u64 - np.uint64(base % (1 << 64))).astype(np.float64)


def _integer_range(
    sample: np.ndarray, percentiles: tuple[float, float]
) -> tuple[Fraction, Fraction]:
    """The range of 64-bit integers beyond float64's exact integers (values near 2**62):
    percentiles of the offsets from the minimum, returned as exact fractions, where float64
    would have made every value the same (and the image one grey)."""
    base = int(sample.min())
    low, high = np.percentile(_offsets(sample, base), percentiles)
    return base + Fraction(float(low)), base + Fraction(float(high))


def to_unit_range(image, value_range: tuple[float, float]) -> np.ndarray:
    """Map ``image`` to float32 in [0, 1] with ``value_range`` = (low, high), clipping."""
    values = np.asarray(image)
    check_finite(values)
    low, high = value_range
    if high <= low:  # constant image: no contrast, map to mid-grey
        return np.full(values.shape, 0.5, dtype=np.float32)
    if values.dtype.itemsize > 4:
        # float64 (and 64-bit integers) may hold values beyond float32's range or below its
        # resolution (1e300, 1e-300): rescale in float64 first, then cast the [0, 1] result.
        # Divided, not multiplied by 1 / (high - low), which overflows for a denormal range.
        if isinstance(low, Rational) and values.dtype.kind in "iu":  # exact (_integer_range)
            info = np.iinfo(values.dtype)
            base = min(max(math.floor(low), int(info.min)), int(info.max))
            out64 = _offsets(np.maximum(values, values.dtype.type(base)), base)
            out64 -= float(low - base)
        else:
            out64 = values - np.float64(low)
        out64 /= float(high - low)
        np.clip(out64, 0.0, 1.0, out=out64)
        return out64.astype(np.float32)
    out = values.astype(np.float32, copy=True)
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def normalize(
    image,
    mean: float,
    std: float,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Return ``image`` as float32 ``(unit_range(image) - mean) / std`` (a new array).

    ``value_range`` defaults to :func:`intensity_range` of ``image`` itself; pass the range of
    the whole volume when normalising one slice at a time so every slice is treated alike.
    """
    if std <= 0:
        raise InputError(f"The normalisation std must be positive, got {std}.")
    if value_range is None:
        value_range = intensity_range(image)
    if value_range[1] <= value_range[0]:
        # No contrast at all: give the model its own mean grey (what padding looks like).
        check_finite(np.asarray(image))
        return np.zeros(np.shape(image), dtype=np.float32)
    out = to_unit_range(image, value_range)
    out -= np.float32(mean)
    out *= np.float32(1.0 / std)
    return out
