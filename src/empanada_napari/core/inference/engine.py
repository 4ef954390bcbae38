"""The 2D inference engine: MitoNet-contract models over single images and stacks of slices.

Per batch of slices: normalise (see :mod:`..preprocess`), zero-pad bottom/right to a multiple
of ``4 * downsample``, average-pool by ``downsample``, pad to the model's ``padding_factor``,
run the model (optionally tile by tile, with AMP on CUDA), then turn the outputs into panoptic
labels with :mod:`.postprocess`. The model is loaded once (and cached by
:func:`~empanada_napari.core.models.loading.load_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Cancelled, InputError
from ..io import read_region
from ..jobs import CancelFlag, Progress, is_cancelled
from ..memory import check_fits, reuse_freed_memory, zeros
from ..models import LoadedModel, load_model
from ..preprocess import check_image, intensity_range, normalize
from ..settings import InferenceSettings, settings_for_model
from . import postprocess as pp

#: On a CPU a model call costs least per pixel at about one 768 x 1024 image's worth of
#: pixels: fewer pixels pay fixed costs per call, more spill the caches (bundled model, 2
#: threads, ns per pixel at batch 1 / 2 / 4 / 8: 165 x 1024 253 / 224 / 197 / 212; 256 x 256
#: 486 / 351 / 287 / 250). So a batch holds about this many pixels, 2 to CPU_MAX_BATCH
#: images: batch 1 of 768 x 1024 was faster alone but 3 % slower in a whole stack run
#: (docs/benchmarks.md).
CPU_BATCH_PIXELS = 3 << 18
#: Images per call when the slice size is not known, and the fewest for large slices.
CPU_MIN_BATCH = 2
CPU_MAX_BATCH = 8
#: Bytes per pixel a slice needs at least while it is segmented, whatever the model: the
#: float32 image and its padded copy, the probabilities, the ids (int64 while they are
#: post-processed) and the uint32 labels. Bounds a run against memory before it starts.
SLICE_BYTES_PER_PIXEL = 24
#: The views of flip averaging: the image, flipped vertically, horizontally and both ways.
FLIPS = ((), (-2,), (-1,), (-2, -1))


@dataclass
class RawOutputs:
    """Model outputs for a batch, cropped to the (padded-to-grid) image.

    ``sem_prob`` (N, C, Hg, Wg) at full resolution; ``ctr_hmp`` (N, 1, h, w) and ``offsets``
    (N, 2, h, w) on a grid ``stride`` times coarser; offsets already in full-resolution pixels.
    ``shape`` is the true (H, W) of the slices (Hg >= H, Wg >= W).
    """

    sem_prob: torch.Tensor
    ctr_hmp: torch.Tensor
    offsets: torch.Tensor
    shape: tuple[int, int]
    extra: dict = field(default_factory=dict)


def _tile_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length``, aligned to ``align``."""
    if length <= tile:
        return [0]
    step = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, step))
    starts.append((length - tile) // align * align)
    return sorted(set(starts))


def unflip(
    sem_prob: torch.Tensor, ctr_hmp: torch.Tensor, offsets: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs of a view flipped along ``dims`` brought back to the image's orientation:
    each map flipped back, and the offset components along the flipped axes negated."""
    if not dims:
        return sem_prob, ctr_hmp, offsets
    # torch.flip copies, so the sign change below edits no model output
    p, c, o = torch.flip(sem_prob, dims), torch.flip(ctr_hmp, dims), torch.flip(offsets, dims)
    for dim in dims:  # offsets channel 0 is dy (axis -2), channel 1 is dx
        o[:, 0 if dim == -2 else 1] *= -1
    return p, c, o


class Engine2D:
    """Run a MitoNet-contract model on 2D images or stacks of slices.

    >>> engine = Engine2D("default", device="auto", confidence_thr=0.5)   # doctest: +SKIP
    >>> labels = engine.segment(image)                                  # (H, W) uint32
    """

    def __init__(
        self,
        model: str | LoadedModel | Any = "default",
        device: str | torch.device | None = "auto",
        settings: InferenceSettings | None = None,
        **params: Any,
    ) -> None:
        self.model = model if isinstance(model, LoadedModel) else load_model(model, device)
        # Without settings, the model's own recommendations (tuned when it was finetuned).
        base = settings or settings_for_model(self.model.config)
        self.settings = replace(base, **params)

    # -- model outputs ---------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    def default_batch_size(self, plane: tuple[int, ...] | None = None) -> int:
        """Images per model call: the ``batch_size`` setting, else 8 on a GPU; on a CPU about
        :data:`CPU_BATCH_PIXELS` pixels of ``plane`` (height, width) images,
        :data:`CPU_MIN_BATCH` to :data:`CPU_MAX_BATCH` (the fewest when ``plane`` is not
        given)."""
        if self.settings.batch_size is not None:
            bs = self.settings.batch_size
        elif self.device.type == "cuda":
            bs = 8
        else:
            pixels = max(1, int(np.prod(plane[-2:]))) if plane is not None else CPU_BATCH_PIXELS
            bs = min(CPU_MAX_BATCH, max(CPU_MIN_BATCH, CPU_BATCH_PIXELS // pixels))
        return bs if self.model.supports_batch else 1

    def check_memory(self, shape: tuple[int, ...], *, whole_result: bool = False) -> None:
        """Refuse a stack (N, H, W) whose batch of slices, and with ``whole_result`` its
        whole label volume, cannot fit in this computer's memory (before any work)."""
        n, h, w = (int(v) for v in shape)
        batch = min(n, self.default_batch_size((h, w)))
        need = batch * h * w * SLICE_BYTES_PER_PIXEL
        what = f"Segmenting slices of {h} x {w} pixels ({batch} at a time)"
        check_fits(need, what, "crop or shrink the image first")
        if whole_result:
            need += n * h * w * np.dtype(np.uint32).itemsize
            what = f"Segmenting {n} slices of {h} x {w} pixels into one array"
            check_fits(need, what, "write the labels to a .zarr output (written slice by slice)")

    def _forward(self, x: torch.Tensor, render_steps: int, fine: bool) -> dict:
        """One model call on a padded batch; AMP on CUDA; outputs as float32."""
        use_amp = self.settings.amp and self.device.type == "cuda" and not self.model.quantized
        if not self.model.quantized:  # the layout of the weights (see load_model)
            x = x.contiguous(memory_format=torch.channels_last)
        with self.model.lock, torch.inference_mode():
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                if self.model.supports_batch or x.shape[0] == 1:
                    out = self.model.module(x, render_steps, fine)
                    return {k: out[k].float() for k in ("sem_logits", "ctr_hmp", "offsets")}
                parts = [self.model.module(x[i : i + 1], render_steps, fine) for i in range(len(x))]
                return {
                    k: torch.cat([p[k].float() for p in parts])
                    for k in ("sem_logits", "ctr_hmp", "offsets")
                }

    def _padded_forward(
        self, x: torch.Tensor, render_steps: int, fine: bool, scale: int, grid: int
    ) -> dict:
        """Pad (N, 1, h, w) to the padding factor, run, crop outputs back to h*scale, h/grid."""
        h, w = x.shape[-2:]
        pad = self.model.padding_factor
        ph, pw = -(-h // pad) * pad, -(-w // pad) * pad
        xp = F.pad(x, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else x
        out = self._forward(xp, render_steps, fine)
        expected = (ph * scale, pw * scale)
        if tuple(out["sem_logits"].shape[-2:]) != expected:
            raise InputError(
                f"Model {self.model.name} returned sem_logits of size "
                f"{tuple(out['sem_logits'].shape[-2:])} for input {(ph, pw)} with render_steps="
                f"{render_steps}; expected {expected}. Is it a MitoNet-contract model?"
            )
        return {
            "sem_logits": out["sem_logits"][..., : h * scale, : w * scale],
            "ctr_hmp": out["ctr_hmp"][..., : h // grid, : w // grid],
            "offsets": out["offsets"][..., : h // grid, : w // grid],
        }

    def infer(
        self, batch: np.ndarray, cancel: CancelFlag = None, *, keep_views: bool = False
    ) -> RawOutputs:
        """Model outputs for normalised float32 slices (N, H, W) (see :meth:`normalize`).

        With flip averaging, ``cancel`` is checked between the four views. ``keep_views``
        runs the four flipped views even without flip averaging and keeps each view's
        semantic probabilities, flipped back, in ``extra["sem_views"]`` (4, N, C, Hg, Wg);
        the outputs themselves are those of the settings (the plain view without averaging)."""
        s = self.settings
        n, height, width = batch.shape
        d = s.downsample
        fine = s.fine_boundaries
        # Pad to a multiple of 4*d so the 1/4 grid maps exactly onto full-resolution pixels.
        unit = 4 * d
        hg, wg = -(-height // unit) * unit, -(-width // unit) * unit
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        x = F.pad(x[:, None], (0, wg - width, 0, hg - height))
        if d > 1:
            x = F.avg_pool2d(x, d)
        render_steps = 2 + int(math.log2(d))
        grid = 1 if fine else 4  # instance-map stride relative to the model input
        hd, wd = x.shape[-2:]
        tile = s.tile_size

        def run(inp: torch.Tensor) -> dict:
            if tile is None or (hd <= tile and wd <= tile):
                return self._padded_forward(inp, render_steps, fine, d, grid)
            return self._tiled_forward(inp, render_steps, fine, d, grid)

        extra = {}
        if not s.tta and not keep_views:
            out = run(x)
            sem_prob = pp.semantic_probabilities(out["sem_logits"])
            ctr_hmp, offsets = out["ctr_hmp"], out["offsets"]
        else:
            # Summed view by view (not kept as a list): flip averaging holds one set of
            # outputs beside the running sum, as it always did.
            total, sems = None, []
            for view in self._flip_views(run, x, cancel):
                if keep_views:
                    sems.append(view[0])
                if total is None:
                    total = view
                elif s.tta:
                    total = tuple(a + b for a, b in zip(total, view, strict=True))
            sem_prob, ctr_hmp, offsets = tuple(t / len(FLIPS) for t in total) if s.tta else total
            if keep_views:
                extra["sem_views"] = torch.stack(sems)
        return RawOutputs(
            sem_prob=sem_prob,
            ctr_hmp=ctr_hmp,
            offsets=offsets,
            shape=(height, width),
            extra=extra,
        )

    def flipped_views(self, planes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model's outputs for normalised ``planes`` (N, H, W) and their three flips, in
        one batch (cheaper per pixel than four calls), each brought back to the image's
        orientation: semantic probabilities (4, N, C, H', W'), centre heat-maps (4, N, 1, ...)
        and offsets (4, N, 2, ...), views in :data:`FLIPS` order. The planes are padded to
        the model's grid first (H' >= H, W' >= W: crop the maps to the planes' size), so each
        view's padding lands where the others' does."""
        if self.settings.tta:  # each view as the model sees it, not averaged over flips
            return Engine2D(self.model, settings=replace(self.settings, tta=False)).flipped_views(
                planes
            )
        n, h, w = planes.shape
        unit = math.lcm(4 * self.settings.downsample, self.model.padding_factor)
        hp, wp = -(-h // unit) * unit, -(-w // unit) * unit
        padded = np.zeros((n, hp, wp), np.float32)
        padded[:, :h, :w] = planes
        views = np.concatenate(
            [np.flip(padded, [d + 3 for d in dims]) if dims else padded for dims in FLIPS]
        )
        raw = self.infer(views)
        parts = [
            unflip(
                *(t[k * n : (k + 1) * n] for t in (raw.sem_prob, raw.ctr_hmp, raw.offsets)), dims
            )
            for k, dims in enumerate(FLIPS)
        ]
        sem, ctr, off = (torch.stack([part[j] for part in parts]) for j in range(3))
        return sem, ctr, off

    @staticmethod
    def _flip_views(
        run: Callable[[torch.Tensor], dict], x: torch.Tensor, cancel=None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(semantic probabilities, centre heat-map, offsets) for the image and its three
        flips (vertical, horizontal, both), each flipped back; their mean is test-time
        augmentation. Flipping an axis negates that component of the offsets (dy, dx). The
        padded size is a multiple of the 1/4 grid, so a flipped grid cell lands exactly on
        another cell."""
        for k, dims in enumerate(FLIPS):
            if k and is_cancelled(cancel):
                raise Cancelled(f"Cancelled after {k} of {len(FLIPS)} flipped views.")
            out = run(torch.flip(x, dims) if dims else x)
            p = pp.semantic_probabilities(out["sem_logits"])
            yield unflip(p, out["ctr_hmp"], out["offsets"], dims)

    def _tiled_forward(
        self, x: torch.Tensor, render_steps: int, fine: bool, scale: int, grid: int
    ) -> dict:
        """Run overlapping tiles and paste each tile's central part into full-size maps."""
        s = self.settings
        n, _, hd, wd = x.shape
        align = 4
        tile = max(align, s.tile_size // align * align)
        overlap = s.tile_overlap // align * align
        margin = overlap // 2
        maps: dict[str, torch.Tensor] = {}
        ys = _tile_starts(hd, tile, overlap, align)
        xs = _tile_starts(wd, tile, overlap, align)
        for y0 in ys:
            for x0 in xs:
                y1, x1 = min(hd, y0 + tile), min(wd, x0 + tile)
                out = self._padded_forward(x[..., y0:y1, x0:x1], render_steps, fine, scale, grid)
                # Owned region: the tile minus half the overlap on sides that have a neighbour.
                oy0 = 0 if y0 == ys[0] else y0 + margin
                ox0 = 0 if x0 == xs[0] else x0 + margin
                oy1 = hd if y0 == ys[-1] else y1 - margin
                ox1 = wd if x0 == xs[-1] else x1 - margin
                for key, value in out.items():
                    f = scale if key == "sem_logits" else 1.0 / grid
                    if key not in maps:
                        size = (round(hd * f), round(wd * f))
                        maps[key] = value.new_zeros((n, value.shape[1], *size))
                    dst = (
                        slice(round(oy0 * f), round(oy1 * f)),
                        slice(round(ox0 * f), round(ox1 * f)),
                    )
                    src = (
                        slice(round((oy0 - y0) * f), round((oy1 - y0) * f)),
                        slice(round((ox0 - x0) * f), round((ox1 - x0) * f)),
                    )
                    maps[key][(..., *dst)] = value[(..., *src)]
        return maps

    # -- post-processing -------------------------------------------------------------------

    def postprocess(self, raw: RawOutputs, index: int, sem_prob: torch.Tensor | None = None):
        """Panoptic labels (H, W) uint32 numpy array for image ``index`` of ``raw``.

        ``sem_prob`` replaces the image's semantic probabilities (3D stack mode passes
        median-filtered ones).
        """
        s = self.settings
        prob = raw.sem_prob[index] if sem_prob is None else sem_prob
        labels = pp.panoptic_labels(
            prob,
            raw.ctr_hmp[index, 0],
            raw.offsets[index],
            confidence_thr=s.confidence_thr,
            center_confidence_thr=s.center_confidence_thr,
            min_distance_object_centers=s.min_distance_object_centers,
            thing_list=self.model.thing_list,
            labels=self.model.labels,
            label_divisor=s.label_divisor,
            stuff_area=s.stuff_area,
            semantic_only=s.semantic_only,
            offset_scale=float(s.downsample),
            valid_shape=raw.shape,
        )
        out = labels.cpu().numpy()
        if s.fill_holes and not s.semantic_only:
            out = pp.fill_instance_holes(out)
        if s.absorb_fragments and not s.semantic_only:
            out = pp.absorb_fragments(out)
        if s.split_fragments and not s.semantic_only:
            out = pp.split_fragments(out, s.label_divisor)
        if out.size and out.max() > np.iinfo(np.uint32).max:
            raise InputError("Label ids exceed uint32; use a smaller label_divisor.")
        return out.astype(np.uint32)

    # -- public entry points ---------------------------------------------------------------

    def normalize(self, images, value_range: tuple[float, float] | None = None) -> np.ndarray:
        """Normalise images for this model (float32, same shape); see :mod:`..preprocess`."""
        return normalize(images, self.model.mean, self.model.std, value_range)

    def segment(
        self,
        image,
        value_range: tuple[float, float] | None = None,
        *,
        cancel: CancelFlag = None,
    ) -> np.ndarray:
        """Segment one 2D image (H, W); returns uint32 labels of the same shape. ``cancel``
        is checked between the network's flipped views and before post-processing."""
        check_image(image, ndim=(2,))
        stack = np.asarray(image)[None]
        return self.segment_slices(stack, value_range=value_range, cancel=cancel)[0]

    def iter_batches(
        self,
        stack,
        *,
        value_range: tuple[float, float] | None = None,
        progress: Progress | None = None,
        cancel: CancelFlag = None,
        first: int = 0,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, labels)`` for consecutive batches of slices of ``stack`` (N, H, W).

        ``stack`` may be numpy, dask or zarr; only one batch is in memory at a time. Each
        slice is segmented independently, from slice ``first`` on (a resumed run).
        ``cancel`` is checked between batches and raises :class:`Cancelled`;
        ``progress(done, total)`` is called after each batch.
        """
        check_image(stack, ndim=(3,))
        self.check_memory(stack.shape)
        if value_range is None:
            value_range = intensity_range(stack)
        total = stack.shape[0]
        bs = self.default_batch_size(stack.shape[1:])
        with reuse_freed_memory():  # for the whole run, not per batch (see core/memory.py)
            for start in range(first, total, bs):
                if is_cancelled(cancel):
                    raise Cancelled(f"Cancelled after {start} of {total} slices.")
                stop = min(start + bs, total)
                region = (slice(start, stop),)
                data = read_region(stack, region, f"slices {start}-{stop - 1}")
                batch = self.normalize(data, value_range)
                raw = self.infer(batch, cancel)
                if is_cancelled(cancel):
                    raise Cancelled(f"Cancelled after {start} of {total} slices.")
                labels = np.stack([self.postprocess(raw, i) for i in range(batch.shape[0])])
                if self.settings.min_area:  # 2D mode only: 3D modes filter whole objects
                    labels = np.stack(
                        [pp.remove_small(lab, self.settings.min_area) for lab in labels]
                    )
                if progress is not None:
                    progress(min(start + bs, total), total)
                yield start, labels

    def segment_slices(
        self,
        stack,
        *,
        out=None,
        value_range: tuple[float, float] | None = None,
        progress: Progress | None = None,
        cancel: CancelFlag = None,
    ):
        """Segment every slice of ``stack`` (N, H, W) independently ("2D mode").

        Writes into ``out`` (any array supporting slice assignment, e.g. a zarr array) when
        given, else returns a new uint32 numpy array. Instance ids are per slice.
        """
        check_image(stack, ndim=(3,))
        if out is None:
            self.check_memory(stack.shape, whole_result=True)
            out = zeros(stack.shape, np.uint32)
        elif tuple(out.shape) != tuple(stack.shape):
            raise InputError(f"Output shape {tuple(out.shape)} != input {tuple(stack.shape)}.")
        for start, labels in self.iter_batches(
            stack, value_range=value_range, progress=progress, cancel=cancel
        ):
            out[start : start + len(labels)] = labels
        return out


def segment_2d(
    image,
    model: str | LoadedModel = "default",
    device: str | torch.device | None = "auto",
    *,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    **params: Any,
) -> np.ndarray:
    """Segment a 2D image (H, W), or each slice of a stack (N, H, W) independently.

    ``params`` are :class:`InferenceSettings` fields. Returns uint32 labels, same shape.
    """
    check_image(image, ndim=(2, 3))
    engine = Engine2D(model, device, **params)
    if image.ndim == 2:
        return engine.segment(image)
    return engine.segment_slices(image, progress=progress, cancel=cancel)
