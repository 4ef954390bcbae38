"""Point and box prompts: the object under a click, from the model's own outputs.

A click asks the model for the one object there. The model runs on a window around the
click only (never the whole image), its four flipped views averaged. Where it is sure at
the click (probability >= ``confidence_thr``) the object is the region of probability >=
:data:`SURE_THRESHOLD`; where it is unsure, the threshold drops to a fraction (``relax``) of
the probability at the click, so the region the model half-sees is taken whole. The centre and
offset heads then keep touching objects apart (panoptic grouping at that threshold), and
the piece under the click, holes filled, is the answer. Where the model sees (almost)
nothing at the click (probability < ``floor``) the answer is empty, with the reason: the
tool falls back to nothing rather than to a guess. A window is doubled (up to
:data:`MAX_WINDOW`) while the object found touches its inner edge.

A box asks for every object in it (:meth:`Prompter.box`); following a click through the
neighbouring slices of a volume (:meth:`Prompter.follow`) links the object plane to plane
with the stack linker's rule (``slice_link_iou`` / ``slice_link_ioa``), so one click gives
a whole 3D object. How the defaults were chosen: docs/benchmarks.md, "Click to add".

Everything here reads only windows of the image (numpy, zarr or dask), never mutates it,
and returns masks with the box they belong to (:class:`Prompted`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import Cancelled, InputError
from ..jobs import CancelFlag, Progress, is_cancelled, report

#: Side of the first window the model sees around a click (pixels).
WINDOW = 256
#: Largest window side a click grows to while its object touches the window's edge.
MAX_WINDOW = 1024
#: Where the model is sure at the click (probability >= its ``confidence_thr``), the object
#: is the region of probability >= this: the MitoNet authors' benchmark setting, and the best
#: of 0.25-0.5 on CDeep3M's training half (docs/benchmarks.md, "Click to add").
SURE_THRESHOLD = 0.3
#: Where the model is unsure at the click, the object is the region whose probability is at
#: least this fraction of the click's (chosen on the same data, 0.2-0.5 tried).
RELAX = 0.2
#: Below this probability at the click the model sees nothing there: no object, no guess.
FLOOR = 0.05
#: Extra context around a box (pixels) so objects at its edge are seen whole.
BOX_MARGIN = 32
#: At most this many slices on either side of the click when following an object.
MAX_FOLLOW = 512


@dataclass
class Prompted:
    """What a prompt found: ``labels`` (0 background, 1..k objects) inside ``box`` (slices
    of the image, one per axis). A point prompt has at most one object (id 1).

    ``probability`` is the model's mean foreground probability over the objects (or at the
    click when nothing was found), ``threshold`` the one used, ``reason`` says why it is
    empty when it is."""

    box: tuple[slice, ...]
    labels: np.ndarray
    probability: float = 0.0
    threshold: float = 0.0
    reason: str = ""

    @property
    def empty(self) -> bool:
        return not bool(self.labels.any())

    @property
    def mask(self) -> np.ndarray:
        """Boolean mask of every object found, inside :attr:`box`."""
        return self.labels > 0

    def full(self, shape: Sequence[int]) -> np.ndarray:
        """The mask placed in a new boolean array of ``shape`` (the image's)."""
        out = np.zeros(tuple(shape), bool)
        out[self.box] = self.mask
        return out


def _integer_point(shape: tuple[int, ...], point: Sequence[float]) -> tuple[int, ...]:
    pt = np.asarray(point, float)
    if pt.shape != (len(shape),) or not np.all(np.isfinite(pt)):
        raise InputError(
            f"a click on an image of {len(shape)} axes needs {len(shape)} finite coordinates, "
            f"got {list(np.ravel(point))}"
        )
    ip = np.round(pt).astype(int)
    if np.any(ip < 0) or np.any(ip >= np.array(shape)):
        raise InputError(
            f"the click at {np.round(pt, 1).tolist()} is outside the image (shape {shape}): "
            "click on the image"
        )
    return tuple(int(v) for v in ip)


def _span(center: int, size: int, length: int) -> tuple[int, int]:
    """A window of ``size`` (at most ``length``) around ``center``, inside ``[0, length)``."""
    size = min(length, size)
    start = int(np.clip(center - size // 2, 0, length - size))
    return start, start + size


class Prompter:
    """A model ready to answer prompts; keep one between clicks (the model stays loaded).

    >>> prompter = Prompter("default")                          # doctest: +SKIP
    >>> found = prompter.point(image, (120, 300))               # doctest: +SKIP
    >>> found.box, found.labels                                 # doctest: +SKIP

    ``model`` is a registered name, a path, a loaded model or an
    :class:`~empanada_napari.core.inference.engine.Engine2D`; ``settings`` are
    :class:`~empanada_napari.core.settings.InferenceSettings` fields (the model's own tuned
    settings otherwise). The four flipped views are always averaged (in one batch). Thread-safe.
    """

    def __init__(
        self,
        model: Any = "default",
        device: Any = "auto",
        *,
        relax: float = RELAX,
        floor: float = FLOOR,
        window: int = WINDOW,
        **settings: Any,
    ) -> None:
        from ..inference.engine import Engine2D

        if not 0 < relax <= 1 or not 0 <= floor < 1 or window < 32:
            raise InputError("relax must be in (0, 1], floor in [0, 1) and window >= 32")
        if isinstance(model, Engine2D):
            base = replace(model.settings, **settings) if settings else model.settings
            model = model.model
            self.engine = Engine2D(model, settings=replace(base, tta=False))
        else:
            self.engine = Engine2D(model, device, **settings)
            self.engine.settings = replace(self.engine.settings, tta=False)
        self.relax, self.floor, self.window = float(relax), float(floor), int(window)
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.engine.model.name

    # -- the model on a window
    def _outputs(self, image: Any, lead: tuple[int, ...], ys: tuple[int, int],
                 xs: tuple[int, int], value_range) -> tuple[Any, np.ndarray]:  # fmt: skip
        """Model outputs (flips averaged) on one window and its foreground probability."""
        from ..inference.engine import RawOutputs

        crop = np.asarray(image[(*lead, slice(*ys), slice(*xs))])
        h, w = crop.shape
        planes = self.engine.normalize(crop, value_range)[None]
        with self._lock:
            sem, ctr, off = self.engine.flipped_views(planes)
        mean = RawOutputs(
            sem_prob=sem.mean(0), ctr_hmp=ctr.mean(0), offsets=off.mean(0), shape=(h, w)
        )
        prob = mean.sem_prob[0]
        fg = prob[0] if prob.shape[0] == 1 else 1.0 - prob[0]
        return mean, fg[:h, :w].cpu().numpy()

    def _instances(self, raw: Any, threshold: float) -> np.ndarray:
        """Panoptic labels of a window at ``threshold`` (the centre/offset heads split
        touching objects)."""
        from ..inference import postprocess as pp

        s = self.engine.settings
        return (
            pp.panoptic_labels(
                raw.sem_prob[0],
                raw.ctr_hmp[0, 0],
                raw.offsets[0],
                confidence_thr=threshold,
                center_confidence_thr=s.center_confidence_thr,
                min_distance_object_centers=s.min_distance_object_centers,
                thing_list=self.engine.model.thing_list,
                labels=self.engine.model.labels,
                label_divisor=s.label_divisor,
                offset_scale=float(s.downsample),
                valid_shape=raw.shape,
            )
            .cpu()
            .numpy()
        )

    def threshold_at(self, probability: float) -> float:
        """The threshold for an object whose probability at the click is ``probability``:
        :data:`SURE_THRESHOLD` where the model is sure (at least its ``confidence_thr``),
        else ``relax`` times the probability."""
        if probability >= self.engine.settings.confidence_thr:
            return min(SURE_THRESHOLD, self.engine.settings.confidence_thr)
        return probability * self.relax

    def value_range(self, image: Any, lead: tuple[int, ...] = ()) -> tuple[float, float]:
        """The intensity range a prompt normalises with: uint8 /255; other types the robust
        range of the plane (pass the volume's own, e.g. cached per layer, to save reading)."""
        from ..preprocess import intensity_range

        return intensity_range(image[lead] if lead else image)

    def _object(self, raw: Any, fg: np.ndarray, at: tuple[int, int], threshold: float):
        """The object under ``at`` (window coordinates) at ``threshold``: the panoptic
        instance there, else the foreground piece; its holes filled."""
        labels = self._instances(raw, threshold)
        region = labels == labels[at] if labels[at] else fg >= threshold
        pieces, _ = ndi.label(region)
        if not pieces[at]:
            return np.zeros(fg.shape, bool)
        return ndi.binary_fill_holes(pieces == pieces[at])

    # -- prompts
    def point(
        self,
        image: Any,
        point: Sequence[float],
        *,
        value_range: tuple[float, float] | None = None,
    ) -> Prompted:
        """The one object under ``point`` ((y, x), or (z, y, x) in a volume: found in
        plane z); empty (with the reason) when the model sees none there."""
        shape = _check_image(image)
        ip = _integer_point(shape, point)
        lead, (py, px) = ip[:-2], ip[-2:]
        height, width = shape[-2:]
        if value_range is None:
            value_range = self.value_range(image, lead)
        size = self.window
        while True:
            ys, xs = _span(py, size, height), _span(px, size, width)
            raw, fg = self._outputs(image, lead, ys, xs, value_range)
            at = (py - ys[0], px - xs[0])
            p = float(fg[at])
            threshold = self.threshold_at(p)
            mask = (
                self._object(raw, fg, at, threshold) if p >= self.floor else np.zeros_like(fg, bool)
            )
            if not _touches_inner_edge(mask, ys, xs, (height, width)) or size >= min(
                MAX_WINDOW, max(height, width)
            ):
                break
            size *= 2
        box = (*(slice(c, c + 1) for c in lead), slice(*ys), slice(*xs))
        labels = mask.astype(np.uint8).reshape((1,) * len(lead) + mask.shape)
        if not mask.any():
            reason = (
                f"the model sees no mitochondrion at the click (probability {p:.2f}); nothing added"
            )
            return Prompted(box, labels, p, threshold, reason)
        return Prompted(box, labels, float(fg[mask].mean()), threshold)

    def box(
        self,
        image: Any,
        box: Sequence[float],
        *,
        value_range: tuple[float, float] | None = None,
    ) -> Prompted:
        """Every object inside ``box`` = (y0, x0, y1, x1), or (z, y0, x0, y1, x1) in a
        volume: the objects the model finds there (the threshold relaxed when it is unsure
        of all of them) that lie mostly inside the box, clipped to it."""
        shape = _check_image(image)
        nlead = len(shape) - 2
        values = np.asarray(box, float)
        if values.shape != (nlead + 4,) or not np.all(np.isfinite(values)):
            raise InputError(
                f"a box on an image of {len(shape)} axes is {nlead + 4} finite numbers "
                f"({'z, ' * nlead}y0, x0, y1, x1), got {list(np.ravel(box))}"
            )
        lead = _integer_point(shape[:nlead], values[:nlead]) if nlead else ()
        height, width = shape[-2:]
        y0, y1 = sorted(int(round(v)) for v in values[[nlead, nlead + 2]])
        x0, x1 = sorted(int(round(v)) for v in values[[nlead + 1, nlead + 3]])
        y0, y1, x0, x1 = max(0, y0), min(height, y1), max(0, x0), min(width, x1)
        if y1 - y0 < 2 or x1 - x0 < 2:
            raise InputError(f"the box {list(np.ravel(box))} does not cover the image")
        if value_range is None:
            value_range = self.value_range(image, lead)
        ys = (max(0, y0 - BOX_MARGIN), min(height, y1 + BOX_MARGIN))
        xs = (max(0, x0 - BOX_MARGIN), min(width, x1 + BOX_MARGIN))
        raw, fg = self._outputs(image, lead, ys, xs, value_range)
        inside = np.zeros(fg.shape, bool)
        inside[y0 - ys[0] : y1 - ys[0], x0 - xs[0] : x1 - xs[0]] = True
        peak = float(fg[inside].max())
        threshold = self.threshold_at(peak)
        out = np.zeros(fg.shape, np.uint16)
        if peak >= self.floor:
            labels = self._instances(raw, threshold)
            ids, counts = np.unique(labels, return_counts=True)
            total = dict(zip(ids.tolist(), counts.tolist(), strict=True))
            ids_in, counts_in = np.unique(labels[inside], return_counts=True)
            k = 0
            for i, c in zip(ids_in.tolist(), counts_in.tolist(), strict=True):
                if i and 2 * c > total[i]:  # mostly inside: the box is about this object
                    k += 1
                    out[ndi.binary_fill_holes(labels == i) & inside & (out == 0)] = k
        sub = out[y0 - ys[0] : y1 - ys[0], x0 - xs[0] : x1 - xs[0]]
        result_box = (*(slice(c, c + 1) for c in lead), slice(y0, y1), slice(x0, x1))
        labels = sub.reshape((1,) * len(lead) + sub.shape)
        if not sub.any():
            reason = f"the model sees no mitochondrion in the box (highest probability {peak:.2f})"
            return Prompted(result_box, labels, peak, threshold, reason)
        return Prompted(result_box, labels, float(fg[out > 0].mean()), threshold)

    def follow(
        self,
        volume: Any,
        point: Sequence[float],
        *,
        value_range: tuple[float, float] | None = None,
        slice_link_iou: float | None = None,
        slice_link_ioa: float | None = None,
        max_slices: int = MAX_FOLLOW,
        progress: Progress | None = None,
        cancel: CancelFlag = None,
    ) -> Prompted:
        """The object under ``point`` = (z, y, x) and its continuation through the
        neighbouring slices of ``volume``, linked slice to slice with the stack linker's
        rule, until it ends (at most ``max_slices`` either way). One click, one 3D object.
        ``progress(done, total)`` counts slices; ``cancel`` is checked between them."""
        from ..settings import StackSettings

        shape = _check_image(volume)
        if len(shape) != 3:
            raise InputError(f"following an object needs a 3D volume, got shape {shape}")
        stack = StackSettings()
        iou_thr = stack.slice_link_iou if slice_link_iou is None else slice_link_iou
        ioa_thr = stack.slice_link_ioa if slice_link_ioa is None else slice_link_ioa
        z0 = _integer_point(shape, point)[0]
        if value_range is None:
            from ..preprocess import intensity_range

            value_range = intensity_range(volume)
        first = self.point(volume, point, value_range=value_range)
        if first.empty:
            return first
        planes = {z0: (first.box[1:], first.mask[0])}
        total = 1 + 2 * max_slices
        for step in (1, -1):
            box, mask = planes[z0]
            z = z0 + step
            while 0 <= z < shape[0] and abs(z - z0) <= max_slices:
                if is_cancelled(cancel):
                    raise Cancelled(f"Following the object was cancelled at slice {z}.")
                found = self._continue(volume, z, box, mask, value_range, iou_thr, ioa_thr,
                                       first.threshold)  # fmt: skip
                if found is None:
                    break
                box, mask = found
                planes[z] = found
                report(progress, len(planes), total)
                z += step
        zs = sorted(planes)
        y0 = min(b[0].start for b, _ in planes.values())
        y1 = max(b[0].stop for b, _ in planes.values())
        x0 = min(b[1].start for b, _ in planes.values())
        x1 = max(b[1].stop for b, _ in planes.values())
        out = np.zeros((zs[-1] - zs[0] + 1, y1 - y0, x1 - x0), np.uint8)
        for z, (b, m) in planes.items():
            out[z - zs[0], b[0].start - y0 : b[0].stop - y0, b[1].start - x0 : b[1].stop - x0] |= m
        box3 = (slice(zs[0], zs[-1] + 1), slice(y0, y1), slice(x0, x1))
        return Prompted(box3, out, first.probability, first.threshold)

    def _continue(self, volume, z, box, mask, value_range, iou_thr, ioa_thr, threshold):
        """The object of slice ``z`` that continues ``mask`` (at ``box`` of the previous
        slice) by the stack linker's rule, as (box, mask); None when the object ends."""
        height, width = volume.shape[-2:]
        # The window: the previous object's bounding box with a margin (it may move or grow).
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        oy0, oy1 = box[0].start + rows[0], box[0].start + rows[-1] + 1
        ox0, ox1 = box[1].start + cols[0], box[1].start + cols[-1] + 1
        size = min(
            MAX_WINDOW, max(self.window, oy1 - oy0 + 2 * BOX_MARGIN, ox1 - ox0 + 2 * BOX_MARGIN)
        )
        ys, xs = _span((oy0 + oy1) // 2, size, height), _span((ox0 + ox1) // 2, size, width)
        raw, fg = self._outputs(volume, (z,), ys, xs, value_range)
        labels = self._instances(raw, threshold)
        # The previous slice's object in this window's coordinates.
        prev = np.zeros(fg.shape, bool)
        _paste(prev, mask, (box[0].start - ys[0], box[1].start - xs[0]))
        # Candidates: the instances at this threshold, and foreground pieces no centre claims.
        pieces, n = ndi.label((fg >= threshold) & (labels == 0))
        cand = np.where(labels > 0, labels, np.where(pieces > 0, pieces + labels.max(), 0))
        ids, inter = np.unique(cand[prev], return_counts=True)
        keep = ids > 0
        ids, inter = ids[keep], inter[keep]
        if ids.size == 0:
            return None
        areas = ndi.sum_labels(np.ones(cand.shape), cand, ids)
        ious = inter / (areas + prev.sum() - inter)
        best = int(np.argmax(ious))
        if ious[best] < iou_thr and inter[best] / areas[best] < ioa_thr:
            return None
        obj = ndi.binary_fill_holes(cand == ids[best])
        return (slice(*ys), slice(*xs)), obj


def _paste(dst: np.ndarray, src: np.ndarray, offset: tuple[int, int]) -> None:
    """Write ``src`` into ``dst`` at ``offset`` (may be negative), the overlap only."""
    spans = zip(offset, dst.shape, src.shape, strict=True)
    d = tuple(slice(max(0, o), min(n, o + m)) for o, n, m in spans)
    if all(sl.stop > sl.start for sl in d):
        dst[d] = src[
            tuple(slice(sl.start - o, sl.stop - o) for sl, o in zip(d, offset, strict=True))
        ]


def _touches_inner_edge(mask: np.ndarray, ys, xs, plane: tuple[int, int]) -> bool:
    """Whether ``mask`` reaches a window edge that is not the image's edge."""
    return bool(
        (mask[0].any() and ys[0] > 0)
        or (mask[-1].any() and ys[1] < plane[0])
        or (mask[:, 0].any() and xs[0] > 0)
        or (mask[:, -1].any() and xs[1] < plane[1])
    )


def _check_image(image: Any) -> tuple[int, ...]:
    from ..preprocess import check_image

    check_image(image, ndim=(2, 3))
    return tuple(int(s) for s in image.shape)


def segment_at(
    image: Any, point: Sequence[float], model: Any = "default", **settings: Any
) -> np.ndarray:
    """Boolean mask, of the image's shape, of the one object under ``point`` ((y, x) in a
    2D image, (z, y, x) in a volume: the mask is in plane z); empty when the model finds
    none there. Looks only at a window around the point. ``model``: a registered name, a
    path or a loaded model (any MitoNet-contract model, finetuned ones included);
    ``settings``: ``device``, ``value_range`` and :class:`Prompter`'s or
    :class:`~empanada_napari.core.settings.InferenceSettings`' fields. To click many times,
    keep a :class:`Prompter` (the model is cached either way)."""
    value_range = settings.pop("value_range", None)
    device = settings.pop("device", "auto")
    found = Prompter(model, device, **settings).point(image, point, value_range=value_range)
    return found.full(image.shape)


def segment_in_box(
    image: Any, box: Sequence[float], model: Any = "default", **settings: Any
) -> np.ndarray:
    """Labels (uint16, the image's shape; 1..k) of every object inside ``box`` =
    (y0, x0, y1, x1), or (z, y0, x0, y1, x1) in a volume; zeros when there is none. For a
    cluster the automatic pass merged or missed. Settings as :func:`segment_at`."""
    value_range = settings.pop("value_range", None)
    device = settings.pop("device", "auto")
    found = Prompter(model, device, **settings).box(image, box, value_range=value_range)
    out = np.zeros(tuple(image.shape), np.uint16)
    out[found.box] = found.labels
    return out
