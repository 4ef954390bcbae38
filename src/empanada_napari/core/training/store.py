"""The data a training run uses: a checked dataset folder (:mod:`.layout`) cut into the
torch dataset of training samples (:mod:`.dataset`), with held-out validation pairs chosen so
that they hold enough objects to score, and multi-class targets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .layout import DatasetSummary, check_dataset, read_plane

#: Multi-class masks hold ``class * CLASS_DIVISOR + instance`` (the original plugin's rule).
CLASS_DIVISOR = 1000


@dataclass
class TrainingData:
    """A checked dataset ready to train on: the training samples and the validation pairs."""

    dataset: Any  # PatchDataset (or its multi-class wrapper)
    val: tuple[list[np.ndarray], list[np.ndarray]] | None
    summary: DatasetSummary
    n_train: int
    n_val: int

    def describe(self) -> str:
        """One sentence for the user."""
        held = (
            f"{self.n_val} held out for validation"
            if self.val is not None
            else "no validation (fewer than 4 patches and no validation folder)"
        )
        return f"{self.summary}: {self.n_train} to train on, {held}."


class _ClassTargets:
    """Multi-class targets over a PatchDataset: ``sem`` holds class ids, centres and offsets
    come from the instance classes only."""

    def __init__(self, base, things: Sequence[int]) -> None:
        self.base, self.things = base, np.asarray(list(things))

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, index: int):
        import torch

        from .targets import panoptic_targets

        image, sample = self.base[index]
        ids = sample["instances"].numpy()
        cls = ids // CLASS_DIVISOR
        things = np.where(np.isin(cls, self.things), ids, 0)
        t = panoptic_targets(things, sigma=self.base.heatmap_sigma)
        sample["sem"] = torch.from_numpy(cls.astype(np.float32))
        sample["ctr_hmp"] = torch.from_numpy(t["ctr_hmp"])
        sample["offsets"] = torch.from_numpy(t["offsets"])
        return image, sample


def _middle(image: np.ndarray) -> np.ndarray:
    return image[image.shape[0] // 2] if image.ndim == 3 else image


#: Held-out patches are added (up to a third of the patches) until they hold this many
#: objects: F1 on 2 patches of 2-3 objects moved in steps of 0.1 (issue 37).
VAL_OBJECTS = 20


def _held_out(masks: Sequence[np.ndarray], fraction: float, seed: int) -> list[int]:
    """Indices of the patches held out for validation: ``fraction`` of them (at least one),
    in a seeded random order, then more while they hold fewer than :data:`VAL_OBJECTS`
    objects, never more than a third of the patches (the rest must train the model)."""
    n = len(masks)
    order = np.random.default_rng(seed).permutation(n).tolist()
    k = max(1, round(n * fraction))
    cap = max(k, n // 3)
    objects = [len(np.unique(m[m > 0])) for m in masks]
    while k < cap and sum(objects[i] for i in order[:k]) < VAL_OBJECTS:
        k += 1
    return order[:k]


def load_training_data(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    val_folders: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    val_fraction: float = 0.15,
    patch_size: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    classes: dict[str, str] | None = None,
) -> TrainingData:
    """Check ``folders`` (:func:`check_dataset`) and turn them into training samples.

    Validation pairs come from ``val_folders``, else patches are held out when there are 4
    or more (:func:`_held_out`: ``val_fraction`` of them, more while they hold fewer than
    :data:`VAL_OBJECTS` objects, at most a third). With several ``classes`` ({name: "instance" |
    "semantic"}, in label order 1, 2, ...) masks hold ``class * 1000 + instance``.
    """
    from .dataset import PatchDataset

    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    from .dataset import check_patch_memory

    check_patch_memory(patch_size, batch_size)  # before any image is read
    summary = check_dataset(folders)
    images = [read_plane(i) for i, _ in summary.pairs]
    masks = [read_plane(m) for _, m in summary.pairs]
    val = None
    if val_folders:
        vsum = check_dataset(val_folders, min_pairs=1)
        val = (
            [_middle(read_plane(i)) for i, _ in vsum.pairs],
            [read_plane(m) for _, m in vsum.pairs],
        )
    elif val_fraction > 0 and len(images) >= 4:
        held = set(_held_out(masks, val_fraction, seed))
        val = (
            [_middle(images[i]) for i in sorted(held)],
            [masks[i] for i in sorted(held)],
        )
        images = [im for i, im in enumerate(images) if i not in held]
        masks = [m for i, m in enumerate(masks) if i not in held]
    dataset = PatchDataset(
        images,
        masks,
        patch_size=patch_size,
        seed=seed,
        samples_per_epoch=max(len(images), 4 * batch_size),
    )
    if classes and len(classes) > 1:
        kinds = list(dict(classes).values())
        things = [i for i, k in enumerate(kinds, start=1) if str(k).lower() == "instance"]
        dataset = _ClassTargets(dataset, things)
    return TrainingData(dataset, val, summary, len(images), len(val[0]) if val else 0)


__all__ = ["CLASS_DIVISOR", "VAL_OBJECTS", "TrainingData", "load_training_data"]
