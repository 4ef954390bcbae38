"""Joint random augmentation of a normalised EM patch and its instance mask (numpy/scipy only).

:func:`random_augment` transforms the image and the mask together, before any target is built,
so heat-maps and offsets computed afterwards follow the transformed objects. The mask is always
resampled with nearest neighbour (order 0), so instance ids are kept and never blended; the
image is resampled bilinearly (order 1). Areas that come from outside the input are filled with
0 in both: 0 is the model's mean grey after normalisation (what inference pads with) and the
background label.

What is drawn, per call (all independent):

=====================  ====================================================================
transform              probability and range
=====================  ====================================================================
horizontal flip        0.5 (``flips=True``)
vertical flip          0.5 (``flips=True``)
90-degree rotation     k * 90 degrees, k uniform in {0, 1, 2, 3} (``rotate=True``)
free rotation          0.5 (``rotate=True``), angle uniform in [-45, 45) degrees; together
                       with the 90-degree turns every orientation can occur
scale (zoom)           0.5 when ``scale`` is a range, factor log-uniform in it (> 1
                       magnifies: objects look larger); a fixed ``(s, s)`` always applies s
brightness             always when ``brightness > 0``: a shift uniform in
                       [-brightness, brightness] in [0, 1] intensity units, i.e.
                       ``shift / norm_std`` in normalised units
contrast               always when ``contrast > 0``: a factor uniform in
                       [1 - contrast, 1 + contrast] applied around the patch mean; a
                       ``(low, high)`` range instead draws the factor log-uniform in it
                       (e.g. (0.5, 2) for instruments with much stronger or weaker contrast)
blur                   0.5 when ``blur`` is a range (off by default): a Gaussian of sigma
                       uniform in it (pixels), for softer instruments / thicker sections
gamma                  0.5 when ``gamma`` is a range (off by default): ``u ** g`` on [0, 1]
                       intensities, g log-uniform in it (g > 1 darkens the mid-greys)
tone curve             0.5 when ``tone > 0`` (off by default): a random monotonic curve on
                       [0, 1] intensities through ``tone`` inner control points, each drawn
                       between its neighbours (MONAI's RandHistogramShift): stains and
                       detectors change the relative greys of membranes, mitochondria and
                       cytoplasm, not only the overall contrast
noise                  0.5 when ``noise > 0`` (off by default): Gaussian noise of std uniform
                       in [0, noise] in [0, 1] intensity units
=====================  ====================================================================

The optional transforms (``blur``, ``gamma``, ``tone``, ``noise``) imitate other microscopes and
preparations (issue 18): they are applied after the geometry in that order, blur first so the
noise stays sharp, and they draw from ``rng`` only when enabled, so the default draws (and hence
earlier results) are unchanged.

The intensity changes apply to the whole output patch, padding included (padding then looks
like a slightly brighter or darker mean grey, which is harmless).

Flips and 90-degree turns are exact pixel permutations done with numpy. Free rotation and
scaling are combined into one matrix and applied by a single
:func:`scipy.ndimage.affine_transform` call per array, so the image is interpolated once. Only
when neither is drawn is the output a pure crop/permutation of the input (no interpolation).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..models import MITONET_NORMS

#: Probability of a free (non-90-degree) rotation when ``rotate=True``.
P_FREE_ROTATION = 0.5
#: Probability of a scale change when the ``scale`` range is not (1, 1).
P_SCALE = 0.5
#: Free rotations are drawn in [-MAX_FREE_ANGLE, MAX_FREE_ANGLE) degrees.
MAX_FREE_ANGLE = 45.0
#: The std of MitoNet's normalisation, the default for converting brightness to normalised units.
DEFAULT_NORM_STD = MITONET_NORMS["std"]
#: The mean of MitoNet's normalisation (gamma works on [0, 1] intensities).
DEFAULT_NORM_MEAN = MITONET_NORMS["mean"]
#: Probability of each optional appearance transform (blur, gamma, noise) when enabled.
P_OPTIONAL = 0.5


def region_size(
    out_size: int, scale: tuple[float, float] = (0.75, 1.25), rotate: bool = True
) -> int:
    """Side of the square input region that covers an ``out_size`` output after any transform.

    A patch of side ``P`` zoomed out by ``1/s`` and turned by 45 degrees reads from a square of
    side ``P * sqrt(2) / s``; sampling that much real data around the patch centre keeps the
    corners of rotated patches filled with image instead of padding. The result has the same
    parity as ``out_size`` so the untransformed case is an exact centred crop.
    """
    zoom_out = 1.0 / min(1.0, float(min(scale)))
    turn = math.sqrt(2.0) if rotate else 1.0
    size = int(math.ceil(out_size * turn * zoom_out)) + 2
    return size + ((size - out_size) % 2)


def _centre_offset(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Integer shift from output to input pixel indices that centres the output on the input."""
    return np.array(
        [(i - o) // 2 for i, o in zip(in_shape, out_shape, strict=True)], dtype=np.float64
    )


def _crop_or_pad(arr: np.ndarray, out_shape: tuple[int, int], shift: np.ndarray) -> np.ndarray:
    """``out[o] = arr[o + shift]`` where that lies inside ``arr``, else 0 (no interpolation)."""
    out = np.zeros(out_shape, dtype=arr.dtype)
    src, dst = [], []
    for n_in, n_out, d in zip(arr.shape, out_shape, shift.astype(int), strict=True):
        lo, hi = max(0, -d), min(n_out, n_in - d)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo + d, hi + d))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def random_augment(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = (0.75, 1.25),
    rotate: bool = True,
    flips: bool = True,
    brightness: float = 0.1,
    contrast: float | tuple[float, float] = 0.1,
    out_size: int | None = None,
    norm_std: float = DEFAULT_NORM_STD,
    blur: tuple[float, float] | None = None,
    gamma: tuple[float, float] | None = None,
    noise: float = 0.0,
    tone: int = 0,
    norm_mean: float = DEFAULT_NORM_MEAN,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transform a normalised 2D ``image`` and its ``mask`` together.

    Returns ``(image float32, mask of the input mask dtype)`` of shape ``(out_size, out_size)``
    (default: the input shape), centred on the input centre. See the module docstring for the
    probabilities; ``norm_std`` converts ``brightness`` from [0, 1] units to normalised units
    and, with ``norm_mean``, maps the image back to [0, 1] intensities for ``gamma``.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2 or image.shape != mask.shape:
        raise InputError(
            f"random_augment needs a 2D image and a mask of the same shape, got {image.shape} "
            f"and {mask.shape}."
        )
    if mask.dtype.kind not in "ui":
        raise InputError(f"The mask must have an integer dtype, got {mask.dtype}.")
    lo_scale, hi_scale = (float(v) for v in scale)
    if not (0 < lo_scale <= hi_scale):
        raise InputError(f"scale must be (low, high) with 0 < low <= high, got {scale}.")
    if isinstance(contrast, (tuple, list)):
        contrast_range = _check_range(contrast, "contrast", 0.0, True)
    else:
        contrast_range = None if contrast == 0 else (1.0 - contrast, 1.0 + contrast)
        if not 0 <= contrast < 1:
            raise InputError(f"contrast must be in [0, 1) or a (low, high) range, got {contrast}.")
    if brightness < 0 or norm_std <= 0:
        raise InputError("brightness must be >= 0 and norm_std > 0.")
    blur, gamma = _check_range(blur, "blur", 0.0), _check_range(gamma, "gamma", 0.0, True)
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}.")
    if int(tone) != tone or tone < 0:
        raise InputError(f"tone must be a non-negative integer, got {tone}.")
    out_shape = image.shape if out_size is None else (int(out_size), int(out_size))
    if min(out_shape) < 1:
        raise InputError(f"out_size must be a positive integer, got {out_size}.")

    # Exact transforms first: numpy views, no resampling and no extra copy.
    if flips:
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1, :], mask[::-1, :]
    if rotate:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)

    angle = 0.0
    if rotate and rng.random() < P_FREE_ROTATION:
        angle = math.radians(rng.uniform(-MAX_FREE_ANGLE, MAX_FREE_ANGLE))
    zoom = 1.0
    if hi_scale > lo_scale and rng.random() < P_SCALE:
        zoom = math.exp(rng.uniform(math.log(lo_scale), math.log(hi_scale)))
    elif hi_scale == lo_scale:
        zoom = lo_scale

    shift = _centre_offset(image.shape, out_shape)
    if angle == 0.0 and zoom == 1.0:
        out_image = _crop_or_pad(image, out_shape, shift).astype(np.float32, copy=False)
        out_mask = _crop_or_pad(mask, out_shape, shift)
    else:
        # Output pixel o reads input M @ (o - c) + c + shift, with c the output centre: a
        # rotation by `angle` and a magnification by `zoom` about the patch centre.
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        matrix = np.array([[cos, -sin], [sin, cos]])
        centre = (np.array(out_shape, dtype=np.float64) - 1.0) / 2.0
        offset = centre + shift - matrix @ centre
        common = dict(matrix=matrix, offset=offset, output_shape=out_shape, mode="constant")
        out_image = ndimage.affine_transform(
            np.ascontiguousarray(image, dtype=np.float32), order=1, cval=0.0, **common
        )
        out_mask = ndimage.affine_transform(
            np.ascontiguousarray(mask), order=0, cval=0, output=mask.dtype, **common
        )

    out_image = _appearance(out_image, rng, blur, gamma, int(tone), norm_mean, norm_std)

    if brightness > 0 or contrast_range is not None:
        shift_value = rng.uniform(-brightness, brightness) / norm_std if brightness > 0 else 0.0
        factor = 1.0
        if isinstance(contrast, (tuple, list)):
            factor = math.exp(rng.uniform(*(math.log(v) for v in contrast_range)))
        elif contrast_range is not None:
            factor = rng.uniform(*contrast_range)
        mean = float(out_image.mean())
        out_image = (out_image - np.float32(mean)) * np.float32(factor) + np.float32(
            mean + shift_value
        )

    if noise > 0 and rng.random() < P_OPTIONAL:
        sigma = rng.uniform(0.0, noise) / norm_std
        out_image = out_image + rng.normal(0.0, sigma, out_image.shape).astype(np.float32)

    return np.ascontiguousarray(out_image, dtype=np.float32), np.ascontiguousarray(out_mask)


def _check_range(
    value: tuple[float, float] | None, what: str, low: float, exclusive: bool = False
) -> tuple[float, float] | None:
    """``None`` or a validated ``(lo, hi)`` with ``low <(=) lo <= hi``."""
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    if not (lo <= hi and (lo > low if exclusive else lo >= low)):
        sign = ">" if exclusive else ">="
        raise InputError(f"{what} must be (low, high) with {sign} {low} low <= high, got {value}.")
    return lo, hi


def _appearance(
    image: np.ndarray,
    rng: np.random.Generator,
    blur: tuple[float, float] | None,
    gamma: tuple[float, float] | None,
    tone: int,
    norm_mean: float,
    norm_std: float,
) -> np.ndarray:
    """The optional blur, gamma and tone curve of :func:`random_augment` (normalised image)."""
    if blur is not None and rng.random() < P_OPTIONAL:
        sigma = rng.uniform(*blur)
        if sigma > 0:
            image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    use_gamma = gamma is not None and rng.random() < P_OPTIONAL
    use_tone = tone > 0 and rng.random() < P_OPTIONAL
    if not (use_gamma or use_tone):
        return image.astype(np.float32, copy=False)
    # Both are defined on [0, 1] intensities, so undo the normalisation around them.
    unit = np.clip(image * np.float32(norm_std) + np.float32(norm_mean), 0.0, 1.0)
    if use_gamma:
        g = math.exp(rng.uniform(math.log(gamma[0]), math.log(gamma[1])))
        unit = unit ** np.float32(g)
    if use_tone:
        knots = np.linspace(0.0, 1.0, tone + 2)
        values = knots.copy()
        for i in range(1, tone + 1):
            values[i] = rng.uniform(values[i - 1], values[i + 1])
        unit = np.interp(unit, knots, values).astype(np.float32)
    return ((unit - np.float32(norm_mean)) / np.float32(norm_std)).astype(np.float32, copy=False)
