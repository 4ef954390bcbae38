"""Pick training patches from an image: at random, at given points, or where the model doubts.

A patch is a square region of one plane of the image (2D), or a short "flipbook" of
``depth`` consecutive planes along ``axis`` whose middle plane is the one to annotate
(docs/design.md s.4). Each :class:`Patch` keeps where it came from (source name, axis, start and
stop in the image's own index space) so the saved dataset can say where every patch was cut.

Strategies (``strategy=``):

* ``"random"``: planes and positions drawn uniformly, patches of one plane never overlapping.
* ``"points"``: one patch centred on each point of an (N, D) array in the image's index
  space (a napari Points layer's data converted to the image's data coordinates); the plane
  is the point's coordinate along ``axis``.
* ``"uncertain"``: the model segments candidate planes (and their flipped views); every
  non-overlapping tile is scored by the model's own doubt, weighted by how much of it the model
  calls mitochondria, and the highest-scoring tiles win (see :func:`doubt_maps` and
  :func:`tile_score`).

Labels are prefilled (``prefill=``) with the model's prediction (``"model"``), cut from an
existing label array (``"labels"``) or left empty (``"none"``), so correcting a patch means
fixing, not painting from scratch. Images may be numpy, dask or zarr arrays of any size: only
the planes a strategy needs are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..jobs import CancelFlag, Progress, check_cancelled, report
from ..memory import reuse_freed_memory
from .doubt import doubt_maps, predict_plane, tile_score

STRATEGIES = ("random", "points", "uncertain")
PREFILLS = ("model", "labels", "none")
#: Pixels of context around a patch given to the model when prefilling random/point patches,
#: so objects cut by the patch border are segmented as in the whole image.
CONTEXT = 64
#: Two picks at the same place lie more than this many planes apart (neighbours look alike).
PLANE_GAP = 3
#: Patches per call at most: each is segmented by the model and then corrected by hand.
MAX_PATCHES = 10_000


@dataclass
class Patch:
    """One training patch and where it came from.

    ``image`` is (H, W), or (depth, H, W) for a flipbook; ``labels`` is the int32 (H, W) mask
    of the plane to annotate (the middle one of a flipbook). ``start``/``stop`` are the
    patch's bounds in every dimension of the source image (the flipbook's planes included).
    """

    image: np.ndarray
    labels: np.ndarray
    source: str
    axis: int
    start: tuple[int, ...]
    stop: tuple[int, ...]
    score: float | None = None
    doubt: dict[str, float] = field(default_factory=dict)

    @property
    def plane(self) -> int | None:
        """Index (along ``axis``) of the annotated plane, None for a 2D source image."""
        if len(self.start) == 2:
            return None
        return (self.start[self.axis] + self.stop[self.axis] - 1) // 2

    def info(self) -> dict[str, Any]:
        """JSON-friendly description (for layer metadata and the dataset manifest)."""
        out: dict[str, Any] = {
            "source": self.source,
            "axis": self.axis,
            "start": [int(v) for v in self.start],
            "stop": [int(v) for v in self.stop],
        }
        if self.score is not None:
            out["doubt"] = round(float(self.score), 4)
        return out


# --------------------------------------------------------------------------- geometry


def _plane_axes(ndim: int, axis: int) -> tuple[int, int]:
    axes = [a for a in range(ndim) if a != axis] if ndim == 3 else [0, 1]
    return axes[0], axes[1]


def _index(ndim: int, axis: int, planes: slice | int, ys: slice, xs: slice) -> tuple:
    """Index tuple selecting ``planes`` along ``axis`` and the (ys, xs) box of the plane."""
    if ndim == 2:
        return (ys, xs)
    index: list[Any] = [None, None, None]
    index[axis] = planes
    a, b = _plane_axes(3, axis)
    index[a], index[b] = ys, xs
    return tuple(index)


def _read(image, ndim: int, axis: int, planes: slice | int, ys: slice, xs: slice) -> np.ndarray:
    """Read a box of planes; a range of planes comes back as (depth, h, w) whatever ``axis``."""
    data = np.asarray(image[_index(ndim, axis, planes, ys, xs)])
    if ndim == 3 and isinstance(planes, slice):
        data = np.moveaxis(data, axis, 0)
    return data


def _box(centre: tuple[float, float], size: tuple[int, int], shape: tuple[int, int]):
    """(y0, x0) of a ``size`` box centred on ``centre`` and kept inside ``shape``."""
    return tuple(
        int(min(max(0, round(c - s / 2)), n - s))
        for c, s, n in zip(centre, size, shape, strict=True)
    )


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Instance ids 1..K (int32) in order of appearance, 0 kept as background."""
    from skimage.segmentation import relabel_sequential

    out = relabel_sequential(np.asarray(labels).astype(np.int64, copy=False))[0]
    return out.astype(np.int32)


def _tiles(shape: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of non-overlapping ``size`` tiles covering the middle of ``shape``."""
    starts = []
    for n, s in zip(shape, size, strict=True):
        k = max(1, n // s)
        margin = (n - k * s) // 2
        starts.append([margin + i * s for i in range(k)])
    return [(y, x) for y in starts[0] for x in starts[1]]


# --------------------------------------------------------------------------- picking


@dataclass
class _Source:
    """The image being cut and the geometry shared by every patch of one call."""

    image: Any
    axis: int
    size: tuple[int, int]  # patch (height, width) in the plane
    depth: int
    value_range: tuple[float, float]
    name: str
    #: Planes (along ``axis``) patches may be centred on: [first, stop); None for all.
    planes: tuple[int, int] | None = None
    #: Places picked before (plane, y0, x0, height, width): never picked again.
    taken: list[tuple[int, int, int, int, int]] = field(default_factory=list)

    @property
    def ndim(self) -> int:
        return self.image.ndim

    @property
    def n_planes(self) -> int:
        return self.image.shape[self.axis] if self.ndim == 3 else 1

    @property
    def plane_shape(self) -> tuple[int, int]:
        a, b = _plane_axes(self.ndim, self.axis)
        return self.image.shape[a], self.image.shape[b]

    @property
    def centres(self) -> tuple[int, int]:
        """First and last plane a flipbook can be centred on (within ``planes``)."""
        lo, hi = self.depth // 2, self.n_planes - self.depth + self.depth // 2
        if self.planes is not None:
            lo, hi = max(lo, self.planes[0]), min(hi, self.planes[1] - 1)
        return lo, hi

    def is_taken(self, z: int, y0: int, x0: int) -> bool:
        """Whether a patch at (z, y0, x0) overlaps a place picked before (in a plane at
        most :data:`PLANE_GAP` away: neighbouring planes look alike)."""
        ph, pw = self.size
        return any(
            abs(z - tz) <= PLANE_GAP and y0 < ty + th and ty < y0 + ph and x0 < tx + tw
            and tx < x0 + pw
            for tz, ty, tx, th, tw in self.taken
        )  # fmt: skip

    def read(self, planes: slice | int, ys: slice, xs: slice) -> np.ndarray:
        return _read(self.image, self.ndim, self.axis, planes, ys, xs)


@dataclass
class _Plan:
    """One chosen patch before reading: plane along the axis, top-left corner, doubt."""

    z: int
    y0: int
    x0: int
    score: float | None = None
    doubt: dict[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None  # prediction already made while scoring


def _random_plans(src: _Source, n: int, rng) -> list[_Plan]:
    (lo, hi), (h, w), (ph, pw) = src.centres, src.plane_shape, src.size
    plans: list[_Plan] = []
    # Plans by (plane, cell of the patch grid): a patch can only overlap those of the 3 x 3
    # cells around its own, so a try costs the same with 10 or 10,000 plans.
    cells: dict[tuple[int, int, int], list[_Plan]] = {}
    for _ in range(200 * n):
        if len(plans) == n:
            break
        z = int(rng.integers(lo, hi + 1))
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        cy, cx = y0 // ph, x0 // pw
        near = (p for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                for p in cells.get((z, cy + dy, cx + dx), ()))  # fmt: skip
        if any(abs(p.y0 - y0) < ph and abs(p.x0 - x0) < pw for p in near):
            continue  # overlapping patches of one plane would be corrected twice
        if src.is_taken(z, y0, x0):
            continue  # picked in an earlier round
        plans.append(_Plan(z, y0, x0))
        cells.setdefault((z, cy, cx), []).append(plans[-1])
    return plans


def _point_plans(src: _Source, points) -> list[_Plan]:
    ndim, axis = src.ndim, src.axis
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != ndim or len(pts) == 0:
        raise InputError(
            f"Points must be an (N, {ndim}) array of coordinates in the image "
            f"(got shape {pts.shape}): add points to a Points layer first."
        )
    a, b = _plane_axes(ndim, axis)
    h, w = src.plane_shape
    lo, hi = src.centres
    plans = []
    for p in pts:
        inside = 0 <= p[a] < h + 0.5 and 0 <= p[b] < w + 0.5
        if not inside or (ndim == 3 and not 0 <= round(p[axis]) < src.n_planes):
            raise InputError(f"Point {tuple(np.round(p, 1))} lies outside the image.")
        # A flipbook near the first or last plane is shifted inward; its middle plane (the
        # one annotated) moves with it.
        z = min(max(int(round(p[axis])), lo), hi) if ndim == 3 else 0
        y0, x0 = _box((p[a], p[b]), src.size, src.plane_shape)
        plans.append(_Plan(z, y0, x0))
    return plans


def _taken_place(info: Mapping[str, Any]) -> tuple[int, int, int, int, int, int] | None:
    """(plane, y0, x0, height, width, axis) of an earlier patch (a :meth:`Patch.info` dict
    or a manifest row); None when it does not say where it was."""
    try:
        start = [int(v) for v in info["start"]]
        stop = [int(v) for v in info["stop"]]
        axis = int(info.get("axis") or 0)
    except (KeyError, TypeError, ValueError):
        return None
    if len(start) != len(stop) or len(start) not in (2, 3):
        return None
    a, b = _plane_axes(len(start), axis)
    z = (start[axis] + stop[axis] - 1) // 2 if len(start) == 3 else 0
    return z, start[a], start[b], stop[a] - start[a], stop[b] - start[b], axis


def _candidate_planes(src: _Source, max_planes: int) -> list[int]:
    if src.ndim == 2:
        return [0]
    if src.centres[1] < src.centres[0]:
        return []
    lo, hi = src.centres
    if hi - lo + 1 <= max_planes:
        return list(range(lo, hi + 1))
    return sorted({int(round(v)) for v in np.linspace(lo, hi, max_planes)})


def _uncertain_plans(src: _Source, n: int, engine, max_planes: int, progress, cancel):
    chosen = _candidate_planes(src, max_planes)
    # Neighbouring planes are predicted too, for the linking test; the flipped views, four
    # model calls, only on the candidate planes themselves.
    needed = sorted({z + d for z in chosen for d in (-1, 0, 1) if 0 <= z + d < src.n_planes})
    candidates = set(chosen)
    preds: dict[int, tuple] = {}
    for i, z in enumerate(needed):
        check_cancelled(cancel, f"Cancelled after scoring {i} of {len(needed)} planes.")
        plane = src.read(z, slice(None), slice(None))
        preds[z] = predict_plane(engine, plane, src.value_range, views=z in candidates)
        report(progress, i + 1, len(needed) + 1, {"phase": "scoring planes"})
    plans = []
    thr = engine.settings.confidence_thr
    for z in chosen:
        labels, prob, ctr, flips = preds[z]
        neighbours = [preds[k][0] for k in (z - 1, z + 1) if k in preds]
        maps = doubt_maps(labels, prob, ctr, confidence_thr=thr, neighbours=neighbours, flips=flips)
        for y0, x0 in _tiles(src.plane_shape, src.size):
            if src.is_taken(z, y0, x0):
                continue  # picked in an earlier round
            box = (slice(y0, y0 + src.size[0]), slice(x0, x0 + src.size[1]))
            parts = {k: float(m[box].mean()) for k, m in maps.items()}
            plans.append(_Plan(z, y0, x0, tile_score(parts, labels[box]), parts, labels[box]))
    plans.sort(key=lambda p: -p.score)
    picked: list[_Plan] = []
    for plan in plans:
        if len(picked) == n:
            break
        # The same place a few planes away looks almost the same: one of them is enough.
        same_place = (
            (p.y0, p.x0) == (plan.y0, plan.x0) for p in picked if abs(p.z - plan.z) <= PLANE_GAP
        )
        if any(same_place):
            continue
        picked.append(plan)
    return picked


def _engine(model, device, engine_params: Mapping[str, Any] | None):
    from ..inference.engine import Engine2D

    return Engine2D(model, device, **dict(engine_params or {}))


@reuse_freed_memory()
def pick_patches(
    image,
    n: int = 16,
    patch_size: int = 256,
    *,
    strategy: str = "random",
    points=None,
    depth: int = 1,
    axis: int = 0,
    prefill: str = "model",
    labels=None,
    model: Any = "default",
    device: str = "auto",
    engine_params: Mapping[str, Any] | None = None,
    max_planes: int = 32,
    source: str = "image",
    seed: int = 0,
    planes: tuple[int, int] | None = None,
    exclude: Sequence[Mapping[str, Any]] = (),
    progress: Progress | None = None,
    cancel: CancelFlag = None,
) -> list[Patch]:
    """Pick ``n`` patches of ``patch_size`` pixels from a 2D (H, W) or 3D (Z, Y, X) image.

    ``strategy`` is ``"random"``, ``"points"`` (``points``: an (N, D) array, one patch per
    point, ``n`` ignored) or ``"uncertain"`` (the model scores up to ``max_planes`` evenly
    spaced planes; see :func:`doubt_maps`). ``depth`` > 1 (odd) makes flipbooks of that many
    consecutive planes along ``axis``. Labels are prefilled from the ``model`` (``prefill=
    "model"``, with ``engine_params`` of 2D inference), from ``labels`` (an array of the image's
    shape) or left empty. Patches are smaller than ``patch_size`` only where the image is.
    ``planes`` = (first, stop) limits the planes patches come from (e.g. keep slices for
    checking); ``exclude`` lists places picked before (:meth:`Patch.info` dicts, or the rows
    of a dataset's manifest: ``start``/``stop``/``axis``), never picked again.
    """
    from ..preprocess import check_image, intensity_range

    check_image(image, ndim=(2, 3))
    if strategy not in STRATEGIES:
        raise InputError(f"Unknown strategy {strategy!r}; choose from {STRATEGIES}.")
    if prefill not in PREFILLS:
        raise InputError(f"Unknown prefill {prefill!r}; choose from {PREFILLS}.")
    if int(patch_size) != patch_size or patch_size < 16:
        raise InputError(f"patch_size must be an integer >= 16, got {patch_size}.")
    if strategy != "points" and (int(n) != n or n < 1):
        raise InputError(f"The number of patches must be >= 1, got {n}.")
    if image.ndim == 2:
        axis, depth = 0, 1
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}.")
    if int(depth) != depth or depth < 1 or depth % 2 == 0:
        raise InputError(f"Flipbook depth must be an odd number >= 1, got {depth}.")
    if labels is not None and tuple(labels.shape) != tuple(image.shape):
        raise InputError(
            f"The labels ({tuple(labels.shape)}) and the image ({tuple(image.shape)}) differ "
            "in shape."
        )
    if prefill == "labels" and labels is None:
        raise InputError("prefill='labels' needs a labels array.")
    src = _Source(image, axis, (0, 0), int(depth), intensity_range(image), source)
    if src.depth > src.n_planes:
        raise InputError(f"Flipbooks of {depth} planes need an image with at least {depth}.")
    src.size = tuple(min(int(patch_size), s) for s in src.plane_shape)
    if planes is not None and image.ndim == 3:
        first, stop = (int(v) for v in planes)
        if not 0 <= first < stop <= src.n_planes:
            raise InputError(
                f"The slice range {first}-{stop - 1} is not inside the image's "
                f"{src.n_planes} slices."
            )
        src.planes = (first, stop)
        if src.centres[1] < src.centres[0]:
            raise InputError(
                f"Flipbooks of {depth} slices do not fit in slices {first}-{stop - 1}."
            )
    src.taken = [t for t in map(_taken_place, exclude) if t is not None and t[-1] == axis]
    src.taken = [t[:-1] for t in src.taken]
    if strategy == "points" and points is not None and len(points) > MAX_PATCHES:
        raise InputError(f"Got {len(points)} points; at most {MAX_PATCHES} patches per call.")
    if strategy != "points":
        _check_number(src, strategy, int(n), max_planes)
    engine = None
    if strategy == "uncertain" or prefill == "model":
        engine = _engine(model, device, engine_params)

    if strategy == "random":
        plans = _random_plans(src, int(n), np.random.default_rng(seed))
    elif strategy == "points":
        if points is None:
            raise InputError("strategy='points' needs points (a Points layer).")
        plans = _point_plans(src, points)
    else:
        plans = _uncertain_plans(src, int(n), engine, max_planes, progress, cancel)

    patches = []
    for i, plan in enumerate(plans):
        check_cancelled(cancel, f"Cancelled after {i} of {len(plans)} patches.")
        patches.append(_make_patch(src, plan, prefill, labels, engine))
        report(progress, i + 1, len(plans), {"phase": "cutting patches"})
    return patches


def _check_number(src: _Source, strategy: str, n: int, max_planes: int) -> None:
    """Refuse more patches than fit in the image without overlapping (non-overlapping squares
    per plane times the planes drawn from; "uncertain": planes more than PLANE_GAP apart) or
    than anyone corrects, before the model runs and a search for places that do not exist."""
    if n > MAX_PATCHES:
        raise InputError(f"{n} patches asked for; at most {MAX_PATCHES} per call.")
    (h, w), (ph, pw), (lo, hi) = src.plane_shape, src.size, src.centres
    planes = max(0, hi - lo + 1) if src.ndim == 3 else 1
    if strategy == "uncertain":
        kept: list[int] = []
        for z in _candidate_planes(src, max_planes):
            kept += [z] if not kept or z - kept[-1] > PLANE_GAP else []
        planes = len(kept)
    fit = planes * (h // ph) * (w // pw)
    if n > fit:
        where = f"{src.n_planes} planes of {h} x {w}" if src.ndim == 3 else f"{h} x {w} pixels"
        raise InputError(
            f"Only {fit} patch(es) of {ph} x {pw} pixels fit without overlapping in this image "
            f"({where}) with the {strategy!r} strategy; ask for at most {fit}, or for smaller "
            "patches."
        )


def _make_patch(src: _Source, plan: _Plan, prefill: str, labels, engine) -> Patch:
    ys = slice(plan.y0, plan.y0 + src.size[0])
    xs = slice(plan.x0, plan.x0 + src.size[1])
    start, stop = [0] * src.ndim, [0] * src.ndim
    a, b = _plane_axes(src.ndim, src.axis)
    start[a], stop[a] = ys.start, ys.stop
    start[b], stop[b] = xs.start, xs.stop
    if src.ndim == 3:
        z0 = plan.z - src.depth // 2  # plans are centred so that the flipbook fits
        start[src.axis], stop[src.axis] = z0, z0 + src.depth
        data = src.read(slice(z0, z0 + src.depth), ys, xs)
        data = data[0] if src.depth == 1 else data
    else:
        data = np.asarray(src.image[ys, xs])
    mask = _prefill(src, plan, ys, xs, prefill, labels, engine)
    return Patch(
        np.ascontiguousarray(data),
        mask,
        src.name,
        src.axis,
        tuple(start),
        tuple(stop),
        plan.score,
        plan.doubt,
    )


def _prefill(src: _Source, plan: _Plan, ys, xs, prefill, labels, engine) -> np.ndarray:
    if prefill == "none":
        return np.zeros(src.size, dtype=np.int32)
    if prefill == "labels":
        return _relabel(np.asarray(labels[_index(src.ndim, src.axis, plan.z, ys, xs)]))
    if plan.labels is not None:
        return _relabel(plan.labels)
    # The model sees some context around the patch, then the patch is cut out.
    (h, w), (ph, pw) = src.plane_shape, src.size
    cy0, cx0 = max(0, plan.y0 - CONTEXT), max(0, plan.x0 - CONTEXT)
    cy1, cx1 = min(h, plan.y0 + ph + CONTEXT), min(w, plan.x0 + pw + CONTEXT)
    region = src.read(plan.z, slice(cy0, cy1), slice(cx0, cx1))
    pred = engine.segment(region, value_range=src.value_range)
    dy, dx = plan.y0 - cy0, plan.x0 - cx0
    return _relabel(pred[dy : dy + ph, dx : dx + pw])


def stack_patches(patches: Sequence[Patch]) -> tuple[np.ndarray, np.ndarray]:
    """Patches as one image array (n, [depth,] H, W) and one int32 labels array of the same
    shape (a flipbook's labels on its middle plane), for napari layers."""
    if not patches:
        raise InputError("No patches.")
    shapes = {p.image.shape for p in patches}
    if len(shapes) != 1:
        raise InputError(f"Patches of different shapes cannot be stacked: {sorted(shapes)}.")
    images = np.stack([p.image for p in patches])
    labels = np.zeros(images.shape, dtype=np.int32)
    for i, p in enumerate(patches):
        if p.image.ndim == 3:
            labels[i, p.image.shape[0] // 2] = p.labels
        else:
            labels[i] = p.labels
    return images, labels


def patch_masks(labels: np.ndarray, depth: int) -> list[np.ndarray]:
    """The mask to save of each patch of a stacked labels array (see :func:`stack_patches`)."""
    labels = np.asarray(labels)
    if depth > 1:
        return [labels[i, depth // 2] for i in range(labels.shape[0])]
    return [labels[i] for i in range(labels.shape[0])]


__all__ = [
    "CONTEXT",
    "PREFILLS",
    "STRATEGIES",
    "Patch",
    "doubt_maps",
    "patch_masks",
    "pick_patches",
    "stack_patches",
]
