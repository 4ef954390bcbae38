"""Panoptic-DeepLab training targets from a 2D instance-label patch.

MitoNet-family models predict three maps per pixel; the targets built here are:

* ``sem`` (H, W): 1 on foreground (any id > 0), 0 on background.
* ``ctr_hmp`` (1, H, W): for every instance a Gaussian of standard deviation ``sigma`` pixels,
  centred on the centroid (mean pixel position, sub-pixel) of that instance, equal to 1 at the
  centroid and truncated at ``3 * sigma``; where Gaussians overlap the maximum is kept.
* ``offsets`` (2, H, W): on each instance pixel the vector ``(cy - y, cx - x)`` that points from
  the pixel to its instance's centroid (so ``position + offset == centroid``); 0 on background.

As in Panoptic-DeepLab, the centre of an object is its centroid even when that point lies
outside the object itself (a C-shaped or ring-like mitochondrion): the model learns to vote for
that point and the post-processing groups pixels by the nearest voted centre, so nothing needs to
be inside. Instances cut by the patch border get the centroid of their visible pixels, which is
what the model can see in the patch.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

#: The Gaussian is evaluated within this many ``sigma`` of its centre (exp(-4.5) ~ 0.011 beyond).
TRUNCATE_SIGMAS = 3.0


def _check_instances(instances) -> np.ndarray:
    """Return ``instances`` as an integer 2D array or raise :class:`InputError`."""
    arr = np.asarray(instances)
    if arr.ndim != 2:
        raise InputError(f"Instance labels must be 2D, got shape {arr.shape}.")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise InputError(f"Instance labels must have an integer dtype, got {arr.dtype}.")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise InputError("Instance labels must be non-negative (0 is background).")
    return arr


def _centroids(arr: np.ndarray):
    """Foreground pixels, their instance index and the per-instance float64 centroids."""
    ys, xs = np.nonzero(arr)
    # One sort of the foreground ids gives every pixel its instance index, so centroids (and
    # offsets) come from bincount / fancy indexing instead of a loop over instances.
    ids, inverse = np.unique(arr[ys, xs], return_inverse=True)
    counts = np.bincount(inverse, minlength=ids.size).astype(np.float64)
    cy = np.bincount(inverse, weights=ys, minlength=ids.size) / np.maximum(counts, 1)
    cx = np.bincount(inverse, weights=xs, minlength=ids.size) / np.maximum(counts, 1)
    return ys, xs, ids, inverse, cy, cx


def instance_centroids(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(ids, cy, cx)``: the sorted non-zero ids and their float64 pixel centroids."""
    _, _, ids, _, cy, cx = _centroids(_check_instances(instances))
    return ids, cy, cx


def panoptic_targets(instances: np.ndarray, sigma: float = 6.0) -> dict[str, np.ndarray]:
    """Build ``sem``, ``ctr_hmp`` and ``offsets`` float32 targets (see module docstring).

    ``instances`` is a 2D integer label image (0 = background); ``sigma`` is the standard
    deviation of the centre heat-map Gaussians in pixels.
    """
    arr = _check_instances(instances)
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"The heat-map sigma must be a number, got {sigma!r}.") from None
    if not (math.isfinite(sigma) and sigma > 0):
        raise InputError(f"The heat-map sigma must be a positive number, got {sigma!r}.")
    height, width = arr.shape
    sem = (arr > 0).astype(np.float32)
    heatmap = np.zeros((1, height, width), dtype=np.float32)
    offsets = np.zeros((2, height, width), dtype=np.float32)

    if not arr.any():
        return {"sem": sem, "ctr_hmp": heatmap, "offsets": offsets}

    ys, xs, _, inverse, cy, cx = _centroids(arr)
    offsets[0, ys, xs] = cy[inverse] - ys
    offsets[1, ys, xs] = cx[inverse] - xs

    # A patch holds few instances, so a loop over them with a small window each is cheaper
    # than evaluating every Gaussian on the whole patch.
    radius = int(math.ceil(TRUNCATE_SIGMAS * sigma))
    inv_two_var = 1.0 / (2.0 * sigma * sigma)
    for y0, x0 in zip(cy, cx, strict=True):
        top, bottom = max(0, int(y0) - radius), min(height, int(y0) + radius + 2)
        left, right = max(0, int(x0) - radius), min(width, int(x0) + radius + 2)
        gy = np.exp(-((np.arange(top, bottom) - y0) ** 2) * inv_two_var)
        gx = np.exp(-((np.arange(left, right) - x0) ** 2) * inv_two_var)
        window = heatmap[0, top:bottom, left:right]
        np.maximum(window, np.outer(gy, gx).astype(np.float32), out=window)

    return {"sem": sem, "ctr_hmp": heatmap, "offsets": offsets}
