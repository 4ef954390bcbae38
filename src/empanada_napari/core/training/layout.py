"""The dataset layout on disk, owned here: pairing images and masks, checking them, writing
patches (append-only) and the manifest of where each came from (docs/design.md s.4).

Layout (the original plugin's, so datasets move between the two)::

    <dataset>/<source>/images/<name>.tiff    image (a flipbook: its consecutive planes)
    <dataset>/<source>/masks/<name>.tiff     int32 instance labels, 0 = background
    <dataset>/manifest.csv                   one row per saved patch (this package's)

Images and masks are paired by file name (stem) within each ``<source>`` folder; ``.tif``,
``.tiff`` and ``.png`` are read, hidden files and anything else are ignored.
:func:`save_patches` never overwrites: new patches get the next free numbers of their
``<source>``, and every patch is checked before the first file is written.
:func:`check_dataset` is what finetuning and training call first: every way a dataset folder
can be wrong is one sentence (no masks, names that do not pair, float masks, too few
patches, no objects), not a DataLoader traceback. The torch datasets that sample from it
are in :mod:`.dataset`; the data a run trains on, in :mod:`.store`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..preprocess import check_image
from .manifest import MANIFEST, append_manifest

#: File suffixes read as images or masks (case-insensitive).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
_INT32_MAX = np.iinfo(np.int32).max


# --------------------------------------------------------------------------- reading & checks


def _is_image_file(path: Path) -> bool:
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
    )


def read_plane(path: Path) -> np.ndarray:
    """Read a TIFF (any number of pages) or a greyscale PNG into memory."""
    try:
        if path.suffix.lower() == ".png":
            from skimage.io import imread

            arr = np.asarray(imread(str(path)))
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                # Greyscale saved as RGB(A) is common for PNG; anything else is not EM data.
                if not (
                    np.array_equal(arr[..., 0], arr[..., 1])
                    and np.array_equal(arr[..., 0], arr[..., 2])
                ):
                    raise InputError(f"{path} is a colour PNG; EM images must be greyscale.")
                arr = arr[..., 0]
            return arr
        import tifffile

        return np.asarray(tifffile.imread(str(path)))
    except InputError:
        raise
    except Exception as err:  # corrupt or truncated file: name it instead of a bare traceback
        raise InputError(f"Cannot read {path}: {err}") from err


def check_mask(mask, what: str) -> np.ndarray:
    """Return ``mask`` as a 2D non-negative integer array that fits int32."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"The {what} must be a 2D label image, got shape {arr.shape}.")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise InputError(f"The {what} must have an integer dtype, got {arr.dtype}.")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > _INT32_MAX):
        raise InputError(f"The {what} must hold ids in 0..{_INT32_MAX} (0 = background).")
    return arr


def check_pair(image, mask, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate one image/mask pair; return ``(2D image, 2D mask, flipbook stack or None)``."""
    image = np.asarray(image)
    check_image(image, ndim=(2, 3), what=f"{what} image")
    mask = check_mask(mask, f"{what} mask")
    stack = None
    if image.ndim == 3:
        if image.shape[0] == 1:
            image = image[0]
        else:
            # A flipbook: consecutive slices, the 2D mask annotates the middle one.
            stack, image = image, image[image.shape[0] // 2]
    if image.shape != mask.shape:
        raise InputError(
            f"The {what} image (plane {image.shape}) and mask ({mask.shape}) differ in shape."
        )
    return image, mask, stack


def index_folder(folder: Path) -> dict[str, Path]:
    """Map stem -> path for the image files in ``folder`` (none if it does not exist)."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not _is_image_file(path):
            continue
        if path.stem in found:
            raise InputError(
                f"Both {found[path.stem].name} and {path.name} in {folder}: one name per pair."
            )
        found[path.stem] = path
    return found


def _source_dirs(root: Path) -> list[Path]:
    """The ``<source>`` folders of a dataset; ``root`` itself if it has ``images/`` directly."""
    if (root / "images").is_dir():
        return [root]
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and (d / "images").is_dir()
    )


def find_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Return the sorted ``(image, mask)`` paths of a dataset folder.

    Images without a mask (and masks without an image) are skipped with a warning; an
    :class:`InputError` is raised when the folder does not exist or nothing pairs.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"Dataset folder {root} does not exist.")
    pairs: list[tuple[Path, Path]] = []
    unpaired: list[str] = []
    for source in _source_dirs(root):
        images = index_folder(source / "images")
        masks = index_folder(source / "masks")
        for stem in sorted(images):
            if stem in masks:
                pairs.append((images[stem], masks[stem]))
            else:
                unpaired.append(f"image {images[stem].relative_to(root)} has no mask")
        unpaired += [
            f"mask {masks[s].relative_to(root)} has no image"
            for s in sorted(masks)
            if s not in images
        ]
    if unpaired:
        shown = "; ".join(unpaired[:5]) + (
            f" (and {len(unpaired) - 5} more)" if len(unpaired) > 5 else ""
        )
        warnings.warn(
            f"Skipping {len(unpaired)} unpaired file(s) in {root}: {shown}.", stacklevel=2
        )
    if not pairs:
        raise InputError(
            f"No image/mask pairs found in {root}: expected <source>/images/<name>.tiff with a "
            "matching <source>/masks/<name>.tiff."
        )
    return pairs


def check_source_name(name: str, what: str) -> str:
    name = str(name)
    if not name or name.startswith(".") or any(c in name for c in "/\\:") or name != name.strip():
        raise InputError(f"Invalid {what} {name!r}: use a plain, non-hidden file name.")
    return name


def write_dataset(
    root: str | os.PathLike,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    source: str = "data",
    names: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write pairs as ``<root>/<source>/images/<name>.tiff`` and ``masks/<name>.tiff``.

    Images keep their dtype (a 3D image with a 2D mask is written as a flipbook); masks are
    written as int32. Names default to ``<source>_<i:04d>``. Everything is checked before the
    first file is written; existing pairs raise :class:`InputError` unless ``overwrite``.
    Returns the image paths (each mask has the same name under ``masks/``).
    """
    import tifffile

    source = check_source_name(source, "source name")
    if len(images) != len(masks):
        raise InputError(f"Got {len(images)} images but {len(masks)} masks.")
    if len(images) == 0:
        raise InputError("Nothing to write: no images given.")
    if names is None:
        names = [f"{source}_{i:04d}" for i in range(len(images))]
    names = [check_source_name(n, "file name") for n in names]
    if len(names) != len(images):
        raise InputError(f"Got {len(names)} names for {len(images)} images.")
    if len(set(names)) != len(names):
        raise InputError("File names must be unique.")

    checked = []
    for name, image, mask in zip(names, images, masks, strict=True):
        check_pair(image, mask, f"'{name}'")
        checked.append((name, np.asarray(image), check_mask(mask, f"'{name}' mask")))

    image_dir = Path(root).expanduser() / source / "images"
    mask_dir = image_dir.parent / "masks"
    # Any image-suffixed file with the same stem counts as existing: a.tif next to a new
    # a.tiff would make the pair ambiguous for find_pairs.
    existing = [
        p
        for name, _, _ in checked
        for folder in (image_dir, mask_dir)
        for p in (folder / f"{name}{s}" for s in IMAGE_SUFFIXES)
        if p.exists()
    ]
    if existing and not overwrite:
        raise InputError(
            f"{len(existing)} file(s) already exist, e.g. {existing[0]}; pass overwrite=True."
        )
    for path in existing:
        path.unlink()

    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image, mask in checked:
        image_path = image_dir / f"{name}.tiff"
        tifffile.imwrite(image_path, image, compression="zlib")
        tifffile.imwrite(mask_dir / f"{name}.tiff", mask.astype(np.int32), compression="zlib")
        written.append(image_path)
    return written


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
    source = check_source_name(source, "source name")
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
    append_manifest(root, source, names, infos, prefilled_by, efforts)
    return written


def read_dataset(root: str | os.PathLike) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names, images and masks of a dataset, after :func:`check_dataset`."""
    summary = check_dataset(root, min_pairs=1, allow_empty=True)
    names = [f"{p[0].parent.parent.name}/{p[0].stem}" for p in summary.pairs]
    images = [read_plane(i) for i, _ in summary.pairs]
    masks = [read_plane(m) for _, m in summary.pairs]
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
        images, masks = index_folder(src / "images"), index_folder(src / "masks")
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
        mask = read_plane(mask_path)
        if mask.dtype.kind == "f":
            float_masks.append(f"{label} ({mask.dtype})")
            continue
        if mask.dtype.kind not in "uib" or mask.ndim != 2:
            shapes.append(f"{label} is not a 2D label image ({mask.dtype}, {mask.shape})")
            continue
        plane = read_plane(image_path).shape[-2:]
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
