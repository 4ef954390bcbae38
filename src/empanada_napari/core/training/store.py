"""Training datasets on disk: save corrected patches (append-only, with a manifest), read
them back, and check datasets in words before any training starts.

Layout (docs/design.md s.4, the original plugin's)::

    <dataset>/<source>/images/<name>.tiff    image (a flipbook: its consecutive planes)
    <dataset>/<source>/masks/<name>.tiff     int32 instance labels, 0 = background
    <dataset>/manifest.csv                   one row per saved patch (this package's)

:func:`save_patches` never overwrites: new patches get the next free numbers of their
``<source>``. Every patch is checked before the first file is written, so a refusal leaves
the folder as it was. :func:`check_dataset` is what finetuning and training call first: it
turns every way a dataset folder can be wrong into one sentence (no masks, names that do not
pair, float masks, too few patches, no objects), instead of a DataLoader traceback.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .dataset import IMAGE_SUFFIXES, _check_name, _index_folder, _read_plane, write_dataset
from .effort import EFFORT_KEYS

MANIFEST = "manifest.csv"
MANIFEST_FIELDS = (
    "name",
    "folder",
    "source",
    "axis",
    "start",
    "stop",
    "date",
    "prefilled_by",
    "corrected_by",
    # The loop's round (the n-th model that prefilled patches of this dataset), the patch's
    # doubt score, and what correcting it cost (objects changed, see .effort).
    "round",
    "doubt",
    "objects",
    *EFFORT_KEYS,
)
#: Fewest pairs a dataset must hold for finetuning or training.
MIN_PAIRS = 2
_NUMBERED = re.compile(r"^(?P<stem>.+)_(?P<num>\d+)$")


@dataclass
class DatasetSummary:
    """What :func:`check_dataset` found: pairs per folder, objects and image sizes."""

    pairs: list[tuple[Path, Path]]
    objects: int
    empty: list[str]
    smallest: tuple[int, int]

    def __str__(self) -> str:
        text = f"{len(self.pairs)} patches with {self.objects} objects"
        if self.empty:
            text += f" ({len(self.empty)} without objects)"
        return text


# --------------------------------------------------------------------------- what a dataset is


def _entries(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if not p.name.startswith(".")]


def is_dataset(root: str | os.PathLike) -> bool:
    """True for an empty folder or one laid out as a dataset (nothing else in it)."""
    root = Path(root)
    if not root.is_dir():
        return False
    for entry in _entries(root):
        if entry.is_file() and entry.name == MANIFEST:
            continue
        if entry.is_dir() and entry.name in ("images", "masks"):
            continue
        if entry.is_dir() and set(p.name for p in _entries(entry)) <= {"images", "masks"}:
            continue
        return False
    return True


def _not_a_dataset(root: Path) -> InputError:
    odd = [
        p.name + ("/" if p.is_dir() else "")
        for p in _entries(root)
        if p.name != MANIFEST
        and not (p.is_dir() and set(q.name for q in _entries(p)) <= {"images", "masks"})
    ]
    return InputError(
        f"{root} is not a dataset folder: it holds {', '.join(sorted(odd)[:4])}"
        f"{' ...' if len(odd) > 4 else ''}. Choose an empty folder or an existing dataset "
        "(<source>/images and <source>/masks)."
    )


# --------------------------------------------------------------------------- saving


def _next_number(folder: Path, source: str) -> int:
    """One more than the highest ``<source>_<n>`` already in ``folder`` (images or masks)."""
    highest = -1
    for sub in ("images", "masks"):
        d = folder / sub
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _NUMBERED.match(p.stem)
            if m and m["stem"] == source and p.suffix.lower() in IMAGE_SUFFIXES:
                highest = max(highest, int(m["num"]))
    return highest + 1


def _check_patches(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], allow_empty: bool
) -> list[np.ndarray]:
    """Masks as int32 after checking every pair; errors name the patches (1-based)."""
    if len(images) != len(masks):
        raise InputError(f"Got {len(images)} patches but {len(masks)} label images.")
    if len(images) == 0:
        raise InputError("Nothing to save: there are no patches.")
    bad_shape, bad_dtype, empty = [], [], []
    out = []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True), start=1):
        image, mask = np.asarray(image), np.asarray(mask)
        plane = image.shape[-2:]
        if mask.shape != plane or image.ndim not in (2, 3):
            bad_shape.append(f"{i} (image {image.shape}, labels {mask.shape})")
            continue
        if mask.dtype.kind not in "uib":
            bad_dtype.append(f"{i} ({mask.dtype})")
            continue
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > np.iinfo(np.int32).max):
            bad_dtype.append(f"{i} (ids outside 0..2^31-1)")
            continue
        if not mask.any():
            empty.append(str(i))
        out.append(mask.astype(np.int32))
    if bad_shape:
        raise InputError(
            f"Patch(es) {', '.join(bad_shape)}: the labels must have the shape of the patch's "
            "plane."
        )
    if bad_dtype:
        raise InputError(f"Patch(es) {', '.join(bad_dtype)}: labels must be integer ids.")
    if empty and not allow_empty:
        raise InputError(
            f"Patch(es) {', '.join(empty)} have no labelled object: paint the mitochondria "
            "in them, remove them, or keep them on purpose as background examples (tick "
            "'keep patches without objects' in Save Training Patches; allow_empty=True in "
            "Python)."
        )
    return out


def save_patches(
    root: str | os.PathLike,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    source: str = "patches",
    infos: Sequence[dict[str, Any]] | None = None,
    prefilled_by: str = "",
    allow_empty: bool = False,
    efforts: Sequence[dict[str, int]] | None = None,
) -> list[Path]:
    """Append corrected patches to the dataset at ``root`` (created if needed).

    Files are ``<root>/<source>/{images,masks}/<source>_<n:04d>.tiff`` with ``n`` continuing
    after the highest number already there; nothing is ever overwritten. ``infos`` (one dict
    per patch, see :meth:`~.patches.Patch.info`) go to ``manifest.csv`` with the date and
    the model that prefilled the labels, the loop's round (:func:`loop_round`) and, with
    ``efforts`` (one :func:`~.effort.correction_effort` dict per patch), what correcting each
    patch cost; ``corrected_by`` is left blank for the user. Patches without any object are
    refused (naming them) unless ``allow_empty``. Returns the image paths written.
    """
    root = Path(root).expanduser()
    source = _check_name(source, "source name")
    if root.exists() and not root.is_dir():
        raise InputError(f"{root} is a file, not a dataset folder.")
    if root.is_dir() and not is_dataset(root):
        raise _not_a_dataset(root)
    masks32 = _check_patches(images, masks, allow_empty)
    if infos is not None and len(infos) != len(images):
        raise InputError(f"Got {len(infos)} patch descriptions for {len(images)} patches.")
    if efforts is not None and len(efforts) != len(images):
        raise InputError(f"Got {len(efforts)} effort counts for {len(images)} patches.")
    first = _next_number(root / source, source)
    names = [f"{source}_{first + i:04d}" for i in range(len(images))]
    written = write_dataset(root, list(images), masks32, source=source, names=names)
    _append_manifest(root, source, names, infos, prefilled_by, efforts)
    return written


def loop_round(rows: Sequence[dict[str, Any]], prefilled_by: str) -> int:
    """The round of the loop patches prefilled by ``prefilled_by`` belong to: the round of
    that model's earlier patches, else one more than the last round (1 for a new dataset)."""
    rounds = [int(r["round"]) for r in rows if str(r.get("round") or "").isdigit()]
    for row in rows:
        if prefilled_by and row.get("prefilled_by") == prefilled_by and row.get("round"):
            return int(row["round"])
    return max(rounds, default=0) + 1


def _append_manifest(root, source, names, infos, prefilled_by, efforts) -> None:
    path = root / MANIFEST
    rows = read_manifest(root)
    today = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    round_ = loop_round(rows, prefilled_by)
    new_rows = []
    for i, name in enumerate(names):
        info = dict(infos[i]) if infos is not None else {}
        effort = dict(efforts[i]) if efforts is not None else {}
        new_rows.append(
            {
                "name": name,
                "folder": source,
                "source": info.get("source", ""),
                "axis": info.get("axis", ""),
                "start": info.get("start", []),
                "stop": info.get("stop", []),
                "date": today,
                "prefilled_by": prefilled_by,
                "corrected_by": "",
                "round": round_,
                "doubt": info.get("doubt", ""),
            }
            | {k: effort.get(k, "") for k in ("objects", *EFFORT_KEYS)}
        )
    header = None
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), None)
    if header is not None and tuple(header) != MANIFEST_FIELDS:
        # A manifest of an earlier version (fewer columns): rewritten once with the new
        # header, its rows kept, so new rows never land under the wrong titles.
        _write_manifest(path, rows + new_rows)
        return
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        if header is None:
            writer.writeheader()
        writer.writerows(_manifest_cells(r) for r in new_rows)


def _manifest_cells(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k, "") for k in MANIFEST_FIELDS}
    for key in ("start", "stop"):
        out[key] = json.dumps(list(row.get(key) or []))
    return out


def _write_manifest(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the whole manifest beside it, then swap it in (a crash keeps the old one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(_manifest_cells(r) for r in rows)
    os.replace(tmp, path)


def describe_loop(root: str | os.PathLike) -> str:
    """One line on a dataset's rounds of the loop, from its manifest: patches and rounds, the
    last round's patches, and the objects the user changed ("" without a manifest)."""
    rows = read_manifest(root)
    if not rows:
        return ""
    rounds = [int(r["round"]) for r in rows if str(r.get("round") or "").isdigit()]
    last = max(rounds, default=0)
    text = f"{len(rows)} patches"
    if last:
        text += f", round {last} of the loop ({rounds.count(last)} patches from it)"
    counted = [r for r in rows if str(r.get("added") or "").isdigit()]
    changed = [sum(int(r.get(k) or 0) for k in EFFORT_KEYS) for r in counted]
    if changed:
        text += f"; {sum(changed)} objects corrected by hand so far"
    return text


def picked_places(root: str | os.PathLike, source: str) -> list[dict[str, Any]]:
    """Manifest rows of the patches already picked from ``source`` (an image's name), for
    :func:`~.patches.pick_patches`' ``exclude``: the loop never picks a place twice."""
    return [r for r in read_manifest(root) if r.get("source") == source]


def read_manifest(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifest rows of a dataset (``start``/``stop`` as lists), [] if it has none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("start", "stop"):
            row[key] = json.loads(row[key]) if row.get(key) else []
    return rows


def read_dataset(root: str | os.PathLike) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names, images and masks of a dataset, after :func:`check_dataset`."""
    summary = check_dataset(root, min_pairs=1, allow_empty=True)
    names = [f"{p[0].parent.parent.name}/{p[0].stem}" for p in summary.pairs]
    images = [_read_plane(i) for i, _ in summary.pairs]
    masks = [_read_plane(m) for _, m in summary.pairs]
    return names, images, masks


# --------------------------------------------------------------------------- checking


def _shown(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Pairs of one dataset folder; every way it does not pair is an error in words."""
    if not root.is_dir():
        raise InputError(f"Dataset folder {root} does not exist.")
    sources = (
        [root]
        if (root / "images").is_dir()
        else sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    )
    sources = [d for d in sources if (d / "images").is_dir() or (d / "masks").is_dir()]
    if not sources:
        raise InputError(
            f"{root} is not a dataset: expected <source>/images/<name>.tiff with matching "
            "<source>/masks/<name>.tiff (save patches with 'Save Training Patches')."
        )
    pairs, problems = [], []
    for src in sources:
        images, masks = _index_folder(src / "images"), _index_folder(src / "masks")
        where = src.relative_to(root.parent)
        if images and not masks:
            problems.append(f"{where} has {len(images)} images but no masks")
            continue
        if masks and not images:
            problems.append(f"{where} has {len(masks)} masks but no images")
            continue
        lonely = [f"images/{images[s].name}" for s in sorted(images) if s not in masks]
        lonely += [f"masks/{masks[s].name}" for s in sorted(masks) if s not in images]
        if lonely:
            problems.append(
                f"in {where}, {len(lonely)} file name(s) do not pair ({_shown(lonely)}): every "
                "image needs a mask of the same name"
            )
            continue
        pairs += [(images[s], masks[s]) for s in sorted(images)]
    if problems:
        raise InputError("; ".join(problems) + ".")
    return pairs


def check_dataset(
    folders: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    min_pairs: int = MIN_PAIRS,
    allow_empty: bool = True,
) -> DatasetSummary:
    """Check one or more dataset folders and say in words what is wrong.

    Raises :class:`InputError` for a missing folder, images without masks (or the reverse),
    names that do not pair, masks that are not integer labels or differ in shape from their
    image, fewer than ``min_pairs`` pairs, or no labelled object at all. Returns a
    :class:`DatasetSummary`.
    """
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    if not folders:
        raise InputError("Choose at least one dataset folder.")
    pairs: list[tuple[Path, Path]] = []
    for folder in folders:
        pairs += _folder_pairs(Path(folder).expanduser())
    names = ", ".join(str(f) for f in folders)
    if len(pairs) < min_pairs:
        raise InputError(
            f"{names} holds {len(pairs)} image/mask pair(s); finetuning needs at least "
            f"{min_pairs}. Save more patches first."
        )
    objects, empty, float_masks, shapes, smallest = 0, [], [], [], None
    for image_path, mask_path in pairs:
        label = f"{mask_path.parent.parent.name}/{mask_path.name}"
        mask = _read_plane(mask_path)
        if mask.dtype.kind == "f":
            float_masks.append(f"{label} ({mask.dtype})")
            continue
        if mask.dtype.kind not in "uib" or mask.ndim != 2:
            shapes.append(f"{label} is not a 2D label image ({mask.dtype}, {mask.shape})")
            continue
        plane = _read_plane(image_path).shape[-2:]
        if plane != mask.shape:
            shapes.append(f"{label} is {mask.shape} but its image is {plane}")
            continue
        n = len(np.unique(mask[mask > 0]))
        objects += n
        if n == 0:
            empty.append(label)
        smallest = plane if smallest is None else np.minimum(smallest, plane)
    if float_masks:
        raise InputError(
            f"Mask(s) {_shown(float_masks)} hold floating-point values; masks must be integer "
            "instance labels (int32, 0 = background). Save them as integers."
        )
    if shapes:
        raise InputError(f"Image and mask sizes disagree: {_shown(shapes)}.")
    if objects == 0:
        raise InputError(f"No mask in {names} has any labelled object: nothing to learn from.")
    if empty and not allow_empty:
        raise InputError(f"Mask(s) {_shown(empty)} have no labelled object.")
    return DatasetSummary(pairs, objects, empty, tuple(int(v) for v in smallest))


# --------------------------------------------------------------------------- for training

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
    images = [_read_plane(i) for i, _ in summary.pairs]
    masks = [_read_plane(m) for _, m in summary.pairs]
    val = None
    if val_folders:
        vsum = check_dataset(val_folders, min_pairs=1)
        val = (
            [_middle(_read_plane(i)) for i, _ in vsum.pairs],
            [_read_plane(m) for _, m in vsum.pairs],
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


__all__ = [
    "CLASS_DIVISOR",
    "MANIFEST",
    "MIN_PAIRS",
    "DatasetSummary",
    "check_dataset",
    "is_dataset",
    "read_dataset",
    "read_manifest",
    "TrainingData",
    "load_training_data",
    "save_patches",
]
