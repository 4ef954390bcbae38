"""Every user-facing setting, defined once: default, limits, help, CLI flag, widget label.

Frozen dataclasses carry the settings end to end, from the CLI or a widget to a dask worker:
:class:`InferenceSettings` (the 2D engine), :class:`StackSettings` (3D stack mode),
:class:`OrthoSettings` (ortho-plane consensus), :class:`BlockSettings` (volumes cut into blocks)
and :class:`TrainSettings` (finetuning and training, with the presets :data:`FINETUNE` and
:data:`TRAIN`). Each field's metadata (:func:`setting`) holds its help in words a biologist
uses, its CLI flag and its widget label; the CLI and the widgets build their options from it,
so a default or a help text changes in this file only. Settings validate themselves on
construction and raise :class:`~empanada_napari.core.errors.InputError` naming the setting.
The public functions also take the inference fields as flat keyword arguments
(``segment_volume(image, min_size=5000)``); :func:`resolve` sorts them into their classes once,
at that boundary (field names are unique across those classes).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from .errors import InputError
from .settings_meta import (
    SettingsBase,
    check,
    check_fraction,
    check_integer,
    cli_flag,
    setting,
    setting_fields,
    tooltip,
    widget_label,
)

__all__ = [
    "AXES",
    "LINKING",
    "BlockSettings",
    "InferenceSettings",
    "OrthoSettings",
    "StackSettings",
    "resolve",
    "cli_flag",
    "setting",
    "setting_fields",
    "tooltip",
    "widget_label",
]

#: Stack axis name -> transpose order that brings that axis first (volume axes are z, y, x).
AXES = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}
DOWNSAMPLE = (1, 2, 4, 8, 16, 32, 64)
#: Slice-linking rules of stack mode (see :class:`StackSettings`); the first is the default.
LINKING = ("separate", "legacy")

T = TypeVar("T")


@dataclass(frozen=True)
class InferenceSettings(SettingsBase):
    """2D panoptic inference of each image or slice (docs/design.md s.3; defaults of the GUI)."""

    confidence_thr: float = setting(
        0.5,
        "A pixel is mitochondrion when the model is at least this sure. Lower it to catch "
        "faint or unusual mitochondria (more false positives), raise it for tighter outlines.",
        flag="--confidence",
        label="confidence",
        minimum=0.0,
        maximum=1.0,
        step=0.05,
    )
    center_confidence_thr: float = setting(
        0.1,
        "How sure the model must be of an object's centre to start a new object. Raise it "
        "if one mitochondrion is cut into pieces; lower it if touching ones are merged.",
        flag="--center-confidence",
        label="centre confidence",
        minimum=0.0,
        maximum=1.0,
        step=0.05,
    )
    min_distance_object_centers: int = setting(
        3,
        "Smallest distance between two object centres, in pixels of the model's 1/4 grid. "
        "Raise it if long mitochondria are split in two; lower it if neighbours are merged.",
        flag="--min-distance",
        label="min centre distance",
        minimum=1,
        maximum=99,
    )
    fine_boundaries: bool = setting(
        False,
        "Assign pixels to objects at full resolution instead of the 1/4 grid: smoother "
        "borders between touching mitochondria, about 4x the memory.",
        advanced=True,
    )
    semantic_only: bool = setting(
        False,
        "Only the mitochondria mask (one label for all), no separate objects.",
        advanced=True,
    )
    fill_holes: bool = setting(False, "Fill holes inside each object.", label="fill holes")
    absorb_fragments: bool = setting(
        True,
        "A piece of an object cut off from the rest of it that touches another object joins "
        "that object: slivers that grouping on the model's 1/4 grid leaves at the border "
        "between objects. The mask does not change.",
        label="join stray pieces",
        advanced=True,
    )
    min_area: int = setting(
        0,
        "Remove objects smaller than this many pixels from each image (2D mode; the 3D "
        "modes have their own minimum size). 0 keeps every object.",
        flag="--min-area",
        label="min object area",
        minimum=0,
        maximum=10**7,
        advanced=True,
    )
    split_fragments: bool = setting(
        False,
        "Give each disconnected piece of an object its own label (2D mode). With 'join "
        "stray pieces' only the pieces that touch no other object.",
        label="split disconnected fragments",
    )
    downsample: int = setting(
        1,
        "Shrink images by this factor before the model sees them: faster, for images whose "
        "pixels are much smaller than the model's training data (MitoNet: about 4-16 nm).",
        label="downsampling",
        choices=DOWNSAMPLE,
    )
    label_divisor: int = setting(
        10000,
        "Object labels are class x divisor + object number (e.g. 10001, 10002 for "
        "mitochondria). Raise it when one image has more objects than this.",
        minimum=1,
        maximum=10**8,
        advanced=True,
    )
    stuff_area: int = setting(
        64,
        "Smallest area (pixels) of a region of a non-object class (multi-class models).",
        flag=None,
        advanced=True,
    )
    tile_size: int | None = setting(
        None,
        "Process images larger than this (pixels) tile by tile, to save memory; none: whole "
        "images.",
        minimum=0,
        maximum=65536,
        step=64,
        label="tile size (0: none)",
        advanced=True,
    )
    tile_overlap: int = setting(
        128,
        "Pixels shared by neighbouring tiles, so objects on tile borders are seen whole.",
        minimum=0,
        advanced=True,
    )
    batch_size: int | None = setting(
        None,
        "Slices per forward pass of the model (default: 8 on a GPU; on a CPU about one "
        "768 x 1024 image's worth of pixels, 2 to 8 slices).",
        minimum=1,
        advanced=True,
    )
    amp: bool = setting(
        True, "Half precision on CUDA GPUs (faster, same results within rounding).", flag=None
    )
    tta: bool = setting(
        False,
        "Average the model over the image and its 3 flips: more accurate, 4x slower.",
        label="average over flips (4x slower)",
    )

    def __post_init__(self) -> None:
        self._check_booleans()
        check_fraction(self, "confidence_thr")
        check_fraction(self, "center_confidence_thr")
        check_integer(self, "min_distance_object_centers", 1)
        check_integer(self, "min_area", 0)
        check(
            self.downsample in DOWNSAMPLE,
            f"downsample must be a power of two from 1 to 64, got {self.downsample!r}",
        )
        check_integer(self, "label_divisor", 1)
        check_integer(self, "stuff_area", 0)
        check_integer(self, "tile_overlap", 0)
        if self.batch_size is not None:
            check_integer(self, "batch_size", 1)
        if self.tile_size is not None:
            check_integer(self, "tile_size", 1)
            check(
                self.tile_size > 2 * self.tile_overlap,
                f"tile_size ({self.tile_size}) must exceed twice tile_overlap "
                f"({self.tile_overlap})",
            )


@dataclass(frozen=True)
class StackSettings(SettingsBase):
    """3D stack mode: 2D objects of each slice linked to the next slice's (docs/design.md s.3)."""

    axis: str = setting(
        "xy",
        "Direction to slice the volume in: xy (along z), xz or yz.",
        choices=tuple(AXES),
    )
    median_slices: int = setting(
        3,
        "Smooth the model's mitochondria probability over this many neighbouring slices "
        "(odd, 1-11): larger values bridge noisy slices; 1 turns smoothing off.",
        minimum=1,
        maximum=11,
        step=2,
    )
    min_size: int = setting(
        500,
        "Remove 3D objects smaller than this many voxels.",
        minimum=0,
        maximum=10**9,
    )
    min_extent: int = setting(
        5,
        "Remove 3D objects whose bounding box is thinner than this (voxels) along any axis.",
        minimum=0,
        maximum=10**6,
    )
    border_aware: bool = setting(
        True,
        "Judge objects cut by the volume's border by the part that could be seen: min extent "
        "does not apply across the cut and min size shrinks with the share of min extent "
        "they show there. Off: they must pass both filters like whole objects.",
        label="keep objects cut by the border",
    )
    linking: str = setting(
        "separate",
        "How 2D objects become 3D objects. separate: an object that ends is not joined to "
        "the object it touches in the next slice, so touching mitochondria stay two objects. "
        "legacy: also join it (the rule of earlier releases and of empanada-napari 1.2.4; "
        "gives earlier releases' labels exactly).",
        choices=LINKING,
        label="slice linking",
        advanced=True,
    )
    slice_link_iou: float = setting(
        0.25,
        "Objects on neighbouring slices are the same object when they overlap at least this "
        "much (intersection over union).",
        flag=None,
        advanced=True,
    )
    slice_link_ioa: float = setting(
        0.25,
        "An unlinked object joins the object of the neighbouring slice that covers at least "
        "this fraction of its own area.",
        flag=None,
        advanced=True,
    )

    def __post_init__(self) -> None:
        self._check_booleans()
        check(self.axis in AXES, f"axis must be one of {sorted(AXES)}, got {self.axis!r}")
        ms = self.median_slices
        check(
            isinstance(ms, int) and 1 <= ms <= 11 and ms % 2 == 1,
            f"median_slices must be odd, 1..11, got {ms!r}",
        )
        check_integer(self, "min_size", 0)
        check_integer(self, "min_extent", 0)
        check_fraction(self, "slice_link_iou", low_open=True)
        check_fraction(self, "slice_link_ioa", low_open=True)
        check(self.linking in LINKING, f"linking must be one of {LINKING}, got {self.linking!r}")
        check(isinstance(self.border_aware, bool), "border_aware must be True or False")


@dataclass(frozen=True)
class OrthoSettings(SettingsBase):
    """Ortho-plane consensus of stacks along xy, xz and yz (docs/design.md s.3)."""

    pixel_vote_thr: int = setting(
        2,
        "A voxel belongs to an object when at least this many of the 3 views agree.",
        flag="--pixel-vote",
        label="voxel votes",
        minimum=1,
        maximum=3,
    )
    cluster_iou_thr: float = setting(
        0.75,
        "Objects that the views agree on less than this (IoU) are split along the view that "
        "separates them: lower it to merge more, raise it to split more.",
        flag="--cluster-iou",
        label="cluster IoU",
        minimum=0.0,
        maximum=1.0,
        step=0.05,
    )
    allow_one_view: bool = setting(
        False, "Keep objects that only one of the 3 views found.", label="allow one view"
    )
    view_link_iou: float = setting(
        0.1,
        "Objects of two views are candidates for the same object when their IoU is at least this.",
        flag=None,
        advanced=True,
    )

    def __post_init__(self) -> None:
        self._check_booleans()
        check_integer(self, "pixel_vote_thr", 1, 3)
        check_fraction(self, "cluster_iou_thr")
        check_fraction(self, "view_link_iou", low_open=True)


@dataclass(frozen=True)
class BlockSettings(SettingsBase):
    """How a volume is cut into blocks and stitched (:mod:`..inference.chunked`)."""

    chunks: tuple[int, int, int] | None = setting(
        None,
        "Block shape Z,Y,X (or one number) for volumes larger than memory; none: the whole "
        "volume when its working memory fits in half this computer's RAM, else the largest "
        "blocks that fit there (whole planes in stack mode where possible; on a cluster, in "
        "a worker's memory limit); memory unknown: 64,512,512 along the stack axis (stack) "
        "or 160^3 (ortho).",
        advanced=True,
    )
    halo: tuple[int, int, int] | None = setting(
        None,
        "Voxels read around each block so that objects on block faces are seen whole; "
        "none: 8,32,32 along the stack axis (stack) or 16 (ortho).",
        advanced=True,
    )
    memory_gb: float | None = setting(
        None,
        "Working memory one block may use (GB) when the block shape is chosen "
        "automatically; none: half this computer's RAM (on a cluster, a worker's share). "
        "The 3D dock sets it lower, as napari shares the memory.",
        minimum=0.1,
        advanced=True,
    )
    face_link_iou: float = setting(
        0.5,
        "Objects of neighbouring blocks are the same when their IoU in the shared region is "
        "at least this.",
        flag=None,
        advanced=True,
    )
    face_link_ioa: float = setting(
        0.5,
        "...or when this fraction of one of them lies inside the other (a piece cut off at "
        "a block face).",
        flag=None,
        advanced=True,
    )

    def __post_init__(self) -> None:
        self._check_booleans()
        for name in ("chunks", "halo"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, numbers.Number) and not isinstance(value, bool):
                value = (value,) * 3
            try:
                value = tuple(int(v) for v in value)
            except (TypeError, ValueError) as err:
                raise InputError(
                    f"{name} needs one integer or three (z, y, x), got {value!r}"
                ) from err
            check(len(value) == 3, f"{name} needs one value or three (z, y, x), got {value!r}")
            low = 1 if name == "chunks" else 0
            check(all(v >= low for v in value), f"{name} must be >= {low}, got {value}")
            object.__setattr__(self, name, value)
        if self.memory_gb is not None:
            check(
                isinstance(self.memory_gb, numbers.Real)
                and not isinstance(self.memory_gb, bool)
                and 0.1 <= float(self.memory_gb) < 1e6,
                f"memory_gb must be at least 0.1 (GB), got {self.memory_gb!r}",
            )
        check_fraction(self, "face_link_iou", low_open=True)
        check_fraction(self, "face_link_ioa", low_open=True)


SETTINGS_CLASSES = {
    "inference": InferenceSettings,
    "stack": StackSettings,
    "ortho": OrthoSettings,
    "blocks": BlockSettings,
}


def resolve(params: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """Sort flat keyword ``params`` into settings objects, once, at an API boundary.

    ``given`` names the settings a function takes (``inference=``, ``stack=``, ...), each an
    object or None (the defaults). Returns ``{name: settings}`` with ``params`` applied;
    unknown keywords raise :class:`InputError` listing the valid ones.
    """
    out = {}
    remaining = dict(params)
    for name, value in given.items():
        cls = SETTINGS_CLASSES[name]
        if value is None:
            value = cls()
        elif not isinstance(value, cls):
            if isinstance(value, Mapping):
                value = cls(**value)
            else:
                raise InputError(f"{name}= must be a {cls.__name__}, got {type(value).__name__}")
        names = {f.name for f in fields(cls)}
        mine = {k: remaining.pop(k) for k in list(remaining) if k in names}
        out[name] = replace(value, **mine) if mine else value
    if remaining:
        valid = sorted(f.name for name in given for f in fields(SETTINGS_CLASSES[name]))
        raise InputError(
            f"Unknown parameter(s): {', '.join(sorted(remaining))}. Valid: {', '.join(valid)}."
        )
    return out


# Post-processing settings that finetuning chooses for a model on the user's corrected
# patches (core/training/tuning.py); a model config stores them under this key.
TUNED_KEY = "inference_settings"
TUNED_FIELDS = (
    "confidence_thr",
    "center_confidence_thr",
    "min_distance_object_centers",
    "absorb_fragments",
    "min_area",
    "tta",
)


def model_recommendations(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inference settings a model config recommends (``inference_settings:``), checked:
    only :data:`TUNED_FIELDS`, values valid for :class:`InferenceSettings`; {} when none."""
    values = (config or {}).get(TUNED_KEY) or {}
    if not isinstance(values, Mapping):
        raise InputError(f"'{TUNED_KEY}' must be a mapping, not {type(values).__name__}.")
    unknown = sorted(set(values) - set(TUNED_FIELDS))
    if unknown:
        raise InputError(
            f"'{TUNED_KEY}' has unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(TUNED_FIELDS)}."
        )
    InferenceSettings(**values)  # raises InputError on a bad value
    return dict(values)


def settings_for_model(
    config: Mapping[str, Any] | None,
    settings: InferenceSettings | None = None,
    given: Iterable[str] = (),
) -> InferenceSettings:
    """``settings`` (default: the defaults) with the values tuned for the model in
    ``config`` for every tuned field the caller did not set (``given``): the one place where
    the engine, ``segment_volume`` and the CLI combine the two."""
    given = set(given)
    tuned = {k: v for k, v in model_recommendations(config).items() if k not in given}
    return replace(settings or InferenceSettings(), **tuned)
