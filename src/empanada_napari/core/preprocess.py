"""Image validation and intensity normalisation for MitoNet-family models.

The rule (documented in the README and docs/inference.md):

* ``uint8`` images are divided by 255, exactly as MitoNet was trained.
* Every other integer or floating-point dtype (uint16, int16, int32, float32, ...) is rescaled
  to [0, 1] from a robust intensity range: the 0.05th and 99.95th percentiles of the image (of
  the whole volume for a stack, estimated on a strided sample of at most ~4 M voxels), then
  clipped. A narrow-range uint16 image (e.g. values 1,000..1,400) therefore looks the same to
  the model as its uint8 conversion, where the original plugin divided by 65,535 and saw black.
* The [0, 1] values are then standardised with the model's ``norms``: ``(v - mean) / std``.

``bool``, complex and object arrays, NaN/inf values, empty arrays and arrays with the wrong
number of dimensions are refused with an :class:`~empanada_napari.core.errors.InputError`.
A constant image is valid: it becomes the model's mean grey (like padding) and segments to
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import InputError

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
    if size <= max_samples:
        return np.asarray(image)
    # Equal stride along every axis, at least 1, so a tall stack is sampled in z too.
    step = max(1, math.ceil((size / max_samples) ** (1.0 / image.ndim)))
    sample = image[tuple(slice(None, None, step) for _ in image.shape)]
    return np.asarray(sample)


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
    low, high = np.percentile(sample, percentiles)
    return float(low), float(high)


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
        out64 = (values - np.float64(low)) * np.float64(1.0 / (high - low))
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
