"""Training data: the on-disk dataset format and a patch sampler for 2D panoptic training.

Format (the same as the original empanada-napari plugin, so datasets move between the two)::

    <dataset>/<source>/images/<name>.tiff   2D greyscale image (uint8 usually; any int/float)
    <dataset>/<source>/masks/<name>.tiff    int32 2D instance labels, 0 = background

Images and masks are paired by file name (stem) within each ``<source>`` folder; ``.tif``,
``.tiff`` and ``.png`` are read, hidden files and anything else (``Thumbs.db``, ``notes.txt``)
are ignored. A "flipbook" image is a short multi-page stack of consecutive slices (Z, H, W)
whose 2D mask annotates the middle slice: it trains as its middle slice, and the whole stack is
kept on the dataset record (``PatchDataset.records[i].stack``) for future 2.5D/3D use.

:class:`PatchDataset` turns such a folder (or in-memory arrays) into random training patches
normalised exactly like inference (:mod:`empanada_napari.core.preprocess`), augmented jointly
with their masks (:mod:`.augment`) and paired with Panoptic-DeepLab targets (:mod:`.targets`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError
from ..memory import check_fits
from ..models import MITONET_NORMS as NORMS
from ..preprocess import intensity_range, normalize
from .augment import random_augment, region_size
from .layout import check_mask, check_pair, find_pairs, read_plane
from .targets import panoptic_targets

#: MitoNet's normalisation (mean, std) of [0, 1] intensities.
# MitoNet's normalisation, defined once in models.config ({mean, std}), as (mean, std).
MITONET_NORMS = (NORMS["mean"], NORMS["std"])
#: Keyword arguments of random_augment that PatchDataset(augment={...}) passes on.
_AUGMENT_KEYS = frozenset(
    {"scale", "rotate", "flips", "brightness", "contrast", "norm_std"}
    | {"blur", "gamma", "noise", "tone", "norm_mean"}
)


def _read_pages(path: Path, z_range: tuple[int, int] | None) -> np.ndarray:
    """Read a (Z, Y, X) TIFF, only the pages in ``z_range`` when given."""
    import tifffile

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"Input {path} does not exist.")
    with tifffile.TiffFile(str(path)) as tif:
        shape = tif.series[0].shape
        n_pages = len(tif.pages)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise InputError(f"{path} must be a 3D (Z, Y, X) stack, got shape {shape}.")
    start, stop = (0, shape[0]) if z_range is None else (int(z_range[0]), int(z_range[1]))
    if not 0 <= start < stop <= shape[0]:
        raise InputError(f"z_range {z_range} is outside 0..{shape[0]} for {path}.")
    if n_pages == shape[0]:  # one page per slice: read only the pages asked for
        data = tifffile.imread(str(path), key=range(start, stop))
        return data.reshape((stop - start, *shape[1:]))
    return np.asarray(tifffile.imread(str(path))).reshape(shape)[start:stop]


def load_volume_slices(
    raw_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    z_range: tuple[int, int] | None = None,
    *,
    binary: bool | None = None,
    connectivity: int = 1,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read a 3D raw TIFF and its labels as lists of 2D ``images`` and int32 ``masks``.

    ``labels_path`` holds 2D instance ids per slice, or a binary mask (``binary=None`` detects
    one: bool dtype or max <= 1), which is split into instances by 2D connected components per
    slice (``connectivity`` 1 = 4-neighbours, 2 = 8). ``z_range=(start, stop)`` reads only those
    slices. For non-uint8 volumes pass ``value_range=intensity_range(volume)`` to
    :class:`PatchDataset` so every slice is normalised alike.
    """
    from skimage.measure import label

    raw = _read_pages(Path(raw_path), z_range)
    labels = _read_pages(Path(labels_path), z_range)
    if raw.shape != labels.shape:
        raise InputError(f"Raw {raw.shape} and labels {labels.shape} differ in shape.")
    if labels.dtype.kind not in "uib":
        raise InputError(f"Labels must be integer or boolean, got {labels.dtype}.")
    if binary is None:
        binary = labels.dtype == np.bool_ or int(labels.max()) <= 1
    masks = []
    for plane in labels:
        if binary:
            masks.append(label(plane > 0, connectivity=connectivity).astype(np.int32))
        else:
            masks.append(check_mask(plane, "labels slice").astype(np.int32, copy=False))
    return list(raw), masks


# --------------------------------------------------------------------------- the dataset


@dataclass
class ImageRecord:
    """One training image: the 2D plane, its mask, normalisation range and foreground."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    value_range: tuple[float, float]
    foreground: np.ndarray  # flat indices of mask > 0, for foreground-centred sampling
    stack: np.ndarray | None = None  # the full flipbook (Z, H, W) when the image was one


def check_patch_memory(patch_size: int, batch_size: int = 1) -> None:
    """Refuse patches whose batch cannot fit in memory, before any is cut: per pixel a sample
    holds at least its region (float32 image, int32 mask) and its image and targets (six
    float32 maps, int64 ids), twice over while a batch is collated; the network needs far
    more."""
    check_fits(
        2 * batch_size * patch_size**2 * (2 * 4 + 6 * 4 + 8),
        f"Training on {patch_size} x {patch_size} pixel patches in batches of {batch_size}",
        "choose a smaller patch size (256 is the default) or batch size",
    )


class PatchDataset(Dataset):
    """2D training samples: (image float32 normalised (1, P, P), targets dict) from a dataset
    folder or in-memory arrays.

    Sample ``index`` uses image ``index % len(records)`` (every image is visited equally often)
    and a generator seeded with ``(seed, epoch, index)``, so a sample is reproducible and
    changes when :meth:`set_epoch` is called. With probability ``foreground_fraction`` the patch
    centre is a random foreground pixel moved by up to ``patch_size // 4`` (the pixel stays in
    the patch, also after augmentation); otherwise it is uniform over the image. Patches stay
    inside the image when the image is large enough; smaller images are padded with 0 (the
    normalised mean grey) and background. ``augment`` is a bool or a mapping of keyword
    arguments for :func:`~.augment.random_augment`.

    Targets: ``sem`` (P, P), ``ctr_hmp`` (1, P, P), ``offsets`` (2, P, P), ``weight`` (P, P)
    float32 and ``instances`` (P, P) int64 (the original ids), all tensors, so the default
    torch collate batches them.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray] | str | Path,
        masks: Sequence[np.ndarray] | None = None,
        *,
        patch_size: int = 256,
        norms: tuple[float, float] = MITONET_NORMS,
        foreground_fraction: float = 0.67,
        augment: bool | Mapping = True,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        heatmap_sigma: float = 6.0,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        if int(patch_size) != patch_size or patch_size < 8:
            raise InputError(f"patch_size must be an integer >= 8, got {patch_size}.")
        check_patch_memory(int(patch_size))
        if not 0.0 <= foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}.")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise InputError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}.")
        if int(seed) != seed or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}.")
        if len(norms) != 2 or not norms[1] > 0:
            raise InputError(f"norms must be (mean, std) with std > 0, got {norms}.")
        if not heatmap_sigma > 0:
            raise InputError(f"heatmap_sigma must be positive, got {heatmap_sigma}.")

        if isinstance(images, (str, os.PathLike)):
            if masks is not None:
                raise InputError("Pass masks only with in-memory images, not with a folder.")
            pairs = find_pairs(images)
            names = [p[0].stem for p in pairs]
            images = [read_plane(p[0]) for p in pairs]
            masks = [read_plane(p[1]) for p in pairs]
        else:
            if masks is None:
                raise InputError("In-memory images need masks.")
            images, masks = list(images), list(masks)
            if len(images) != len(masks):
                raise InputError(f"Got {len(images)} images but {len(masks)} masks.")
            names = [f"image_{i:04d}" for i in range(len(images))]
        if not images:
            raise InputError("The dataset has no images.")

        self.patch_size = int(patch_size)
        self.norms = (float(norms[0]), float(norms[1]))
        self.foreground_fraction = float(foreground_fraction)
        self.samples_per_epoch = samples_per_epoch
        self.seed = int(seed)
        self.epoch = 0
        self.heatmap_sigma = float(heatmap_sigma)
        self.augment_kwargs: dict | None = None
        if augment:
            self.augment_kwargs = dict(augment) if isinstance(augment, Mapping) else {}
            unknown = set(self.augment_kwargs) - _AUGMENT_KEYS
            if unknown:
                # Caught here rather than as a TypeError inside a DataLoader worker.
                raise InputError(
                    f"Unknown augmentation option(s) {sorted(unknown)}; "
                    f"expected some of {sorted(_AUGMENT_KEYS)}."
                )
            self.augment_kwargs.setdefault("norm_std", self.norms[1])
            self.augment_kwargs.setdefault("norm_mean", self.norms[0])

        self.records: list[ImageRecord] = []
        for name, image, mask in zip(names, images, masks, strict=True):
            plane, mask2d, stack = check_pair(image, mask, f"'{name}'")
            # One range per source image (the whole flipbook for a stack), computed once here
            # so every patch of an image is normalised exactly like inference would.
            vrange = value_range or intensity_range(stack if stack is not None else plane)
            self.records.append(
                ImageRecord(
                    name,
                    plane,
                    mask2d,
                    (vrange[0], vrange[1]),  # ints stay exact (64-bit images)
                    np.flatnonzero(mask2d),
                    stack,
                )
            )

        if self.augment_kwargs is not None:
            self._region = region_size(
                self.patch_size,
                scale=self.augment_kwargs.get("scale", (0.75, 1.25)),
                rotate=self.augment_kwargs.get("rotate", True),
            )
        else:
            self._region = self.patch_size
        # Without augmentation, clamping the centre into the image keeps a foreground pixel
        # within P/4 of it inside the patch. Rotation and zoom move pixels away from the centre
        # (by sqrt(2) * zoom at most), so then the centre must also stay this close (per axis)
        # to the chosen pixel for it to remain in the patch.
        self._fg_reach: int | None = None
        if self.augment_kwargs is not None:
            zoom = max(1.0, float(max(self.augment_kwargs.get("scale", (0.75, 1.25)))))
            turn = math.sqrt(2.0) if self.augment_kwargs.get("rotate", True) else 1.0
            self._fg_reach = max(0, int((self.patch_size / 2 - 1) / (turn * zoom)))

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: the same index draws a different patch in each epoch."""
        if int(epoch) != epoch or epoch < 0:
            raise InputError(f"epoch must be a non-negative integer, got {epoch}.")
        self.epoch = int(epoch)

    def _centre(self, rec: ImageRecord, rng: np.random.Generator) -> tuple[int, int]:
        """Pick the patch centre pixel (see the class docstring)."""
        half, jitter = self.patch_size // 2, self.patch_size // 4
        centre = []
        # Centres that keep [c - half, c - half + P) inside the image; a too small image gets
        # the one centre that pads it evenly.
        bounds = []
        for n in rec.image.shape:
            lo, hi = half, n - self.patch_size + half
            if hi < lo:
                lo = hi = (n - self.patch_size) // 2 + half
            bounds.append((lo, hi))
        if rec.foreground.size and rng.random() < self.foreground_fraction:
            pixel = np.unravel_index(
                rec.foreground[rng.integers(rec.foreground.size)], rec.image.shape
            )
            for p, (lo, hi) in zip(pixel, bounds, strict=True):
                c = int(np.clip(p + rng.integers(-jitter, jitter + 1), lo, hi))
                if self._fg_reach is not None:
                    # Keeping the pixel in the augmented patch wins over staying inside the
                    # image (the augmented region reaches past the image border anyway).
                    c = int(np.clip(c, p - self._fg_reach, p + self._fg_reach))
                centre.append(c)
        else:
            centre = [int(rng.integers(lo, hi + 1)) for lo, hi in bounds]
        return centre[0], centre[1]

    def _region_at(self, rec: ImageRecord, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image and int32 mask of the square region centred on (cy, cx)."""
        size = self._region
        top, left = cy - size // 2, cx - size // 2
        h, w = rec.image.shape
        y0, y1 = max(0, top), min(h, top + size)
        x0, x1 = max(0, left), min(w, left + size)
        image = np.zeros((size, size), dtype=np.float32)  # 0 = normalised mean grey
        mask = np.zeros((size, size), dtype=np.int32)
        if y1 > y0 and x1 > x0:
            dst = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
            image[dst] = normalize(rec.image[y0:y1, x0:x1], *self.norms, rec.value_range)
            mask[dst] = rec.mask[y0:y1, x0:x1]
        return image, mask

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        rec = self.records[index % len(self.records)]
        cy, cx = self._centre(rec, rng)
        image, mask = self._region_at(rec, cy, cx)
        if self.augment_kwargs is not None:
            image, mask = random_augment(
                image, mask, rng, out_size=self.patch_size, **self.augment_kwargs
            )
        targets = panoptic_targets(mask, sigma=self.heatmap_sigma)
        sample = {
            "sem": torch.from_numpy(targets["sem"]),
            "ctr_hmp": torch.from_numpy(targets["ctr_hmp"]),
            "offsets": torch.from_numpy(targets["offsets"]),
            "instances": torch.from_numpy(mask.astype(np.int64)),
            "weight": torch.ones(mask.shape, dtype=torch.float32),
        }
        return torch.from_numpy(np.ascontiguousarray(image)[None]), sample


class MixedDataset(Dataset):
    """Samples drawn from several datasets (e.g. one :class:`PatchDataset` per microscope)
    in fixed proportions, whatever their sizes.

    Sample ``index`` picks source ``s`` with probability ``weights[s]`` (default: equal, so a
    small dataset is seen as often as a large one) and then a uniform sample of that source,
    both from a generator seeded with ``(seed, epoch, index)``: reproducible, and different
    after :meth:`set_epoch`, which is passed on to the sources.
    """

    def __init__(
        self,
        sources: Sequence[Dataset],
        weights: Sequence[float] | None = None,
        *,
        samples_per_epoch: int,
        seed: int = 0,
    ) -> None:
        sources = list(sources)
        if not sources or any(len(s) < 1 for s in sources):
            raise InputError("MixedDataset needs at least one source, none of them empty.")
        w = np.ones(len(sources)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(sources),) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise InputError(
                f"weights must be {len(sources)} non-negative numbers with a positive sum, "
                f"got {weights}."
            )
        if int(samples_per_epoch) != samples_per_epoch or samples_per_epoch < 1:
            raise InputError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}.")
        if int(seed) != seed or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}.")
        self.sources = sources
        self.weights = w / w.sum()
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch here and in every source that has epochs."""
        if int(epoch) != epoch or epoch < 0:
            raise InputError(f"epoch must be a non-negative integer, got {epoch}.")
        self.epoch = int(epoch)
        for source in self.sources:
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)

    def source_of(self, index: int) -> tuple[int, int]:
        """``(source number, index within it)`` that sample ``index`` reads."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        # A stream distinct from the sources' own (seed, epoch, index) generators.
        rng = np.random.default_rng((self.seed, self.epoch, int(index), 1))
        s = int(rng.choice(len(self.sources), p=self.weights))
        return s, int(rng.integers(len(self.sources[s])))

    def __getitem__(self, index: int):
        s, inner = self.source_of(index)
        return self.sources[s][inner]
