"""Training and finetuning of MitoNet-family models: patches, the dataset layout on disk
(:mod:`.layout`), torch datasets, targets, loss, loops."""

from __future__ import annotations

from .augment import random_augment, region_size
from .dataset import (
    MITONET_NORMS,
    ImageRecord,
    MixedDataset,
    PatchDataset,
    load_volume_slices,
)
from .export import TrainResult
from .layout import (
    IMAGE_SUFFIXES,
    DatasetSummary,
    check_dataset,
    find_pairs,
    is_dataset,
    read_dataset,
    save_patches,
    write_dataset,
)
from .loops import finetune, load_encoder_weights, train
from .loss import LossWeights, PanopticLoss
from .manifest import read_manifest
from .patches import Patch, doubt_maps, patch_masks, pick_patches, stack_patches
from .runner import TrainingCancelled, TrainSettings, validate_model
from .store import TrainingData, load_training_data
from .targets import instance_centroids, panoptic_targets

__all__ = [
    "IMAGE_SUFFIXES",
    "MITONET_NORMS",
    "DatasetSummary",
    "ImageRecord",
    "LossWeights",
    "MixedDataset",
    "PanopticLoss",
    "Patch",
    "PatchDataset",
    "TrainResult",
    "TrainSettings",
    "TrainingCancelled",
    "TrainingData",
    "check_dataset",
    "doubt_maps",
    "find_pairs",
    "finetune",
    "instance_centroids",
    "is_dataset",
    "load_encoder_weights",
    "load_training_data",
    "load_volume_slices",
    "panoptic_targets",
    "patch_masks",
    "pick_patches",
    "random_augment",
    "read_dataset",
    "read_manifest",
    "region_size",
    "save_patches",
    "stack_patches",
    "train",
    "validate_model",
    "write_dataset",
]
