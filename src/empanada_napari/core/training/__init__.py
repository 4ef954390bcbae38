"""Training and finetuning of MitoNet-family models: data, targets, augmentation, loss, loops."""

from __future__ import annotations

from .augment import random_augment, region_size
from .dataset import (
    IMAGE_SUFFIXES,
    MITONET_NORMS,
    ImageRecord,
    MixedDataset,
    PatchDataset,
    find_pairs,
    load_volume_slices,
    write_dataset,
)
from .loops import (
    TrainResult,
    TrainSettings,
    finetune,
    load_encoder_weights,
    train,
    validate_model,
)
from .loss import LossWeights, PanopticLoss
from .targets import instance_centroids, panoptic_targets

__all__ = [
    "IMAGE_SUFFIXES",
    "MITONET_NORMS",
    "ImageRecord",
    "LossWeights",
    "MixedDataset",
    "PanopticLoss",
    "TrainResult",
    "TrainSettings",
    "PatchDataset",
    "find_pairs",
    "finetune",
    "instance_centroids",
    "load_encoder_weights",
    "load_volume_slices",
    "panoptic_targets",
    "random_augment",
    "region_size",
    "train",
    "validate_model",
    "write_dataset",
]
