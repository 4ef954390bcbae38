"""Training settings: :class:`TrainSettings` and its presets, :data:`FINETUNE` (the
Finetune dock's and ``finetune``'s defaults) and :data:`TRAIN` (training from scratch). The
CLI's options and the training docks are built from these fields (docs/design.md s.5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .settings_meta import (
    SettingsBase,
    check,
    check_integer,
    is_finite,
    setting,
)

#: Encoder stages that can be trained while the rest of the encoder stays frozen.
ENCODER_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class TrainSettings(SettingsBase):
    """A finetuning or training run (docs/design.md s.5). The defaults are the finetuning
    preset (:data:`FINETUNE`); :data:`TRAIN` is the preset for training from scratch. The
    CLI's ``finetune`` / ``train`` options and the Finetune / Train docks are built from
    these fields with their preset's defaults."""

    iterations: int = setting(
        300,
        "Training steps. More learn more and take longer (the dock and the command line say "
        "how long the run will take once its first steps are measured).",
        minimum=1,
        maximum=10**6,
    )
    batch_size: int = setting(
        4,
        "Patches per training step. Larger batches train smoother steps and take longer "
        "each (about linearly on a CPU).",
        label="batch size",
        minimum=1,
        maximum=256,
    )
    lr: float = setting(
        0.001,
        "Peak learning rate of the one-cycle schedule. Lower it if the loss jumps about; "
        "raise it if the loss hardly moves.",
        label="learning rate",
        minimum=1e-5,
        maximum=0.1,
        step=0.0005,
    )
    patch_size: int = setting(
        256,
        "Side (pixels) of the crops the model trains on, cut from your patches.",
        label="patch size",
        minimum=64,
        maximum=2048,
        step=32,
        advanced=True,
    )
    val_fraction: float = setting(
        0.15,
        "Part of the patches held out to score the model during training (more while they "
        "hold fewer than 20 objects, at most a third; 0: none). Needed to keep the best "
        "weights, and a cancelled run's.",
        label="held out for validation",
        minimum=0.0,
        maximum=0.5,
        step=0.05,
        advanced=True,
    )
    val_every: int = setting(
        0,
        "Score the held-out patches every this many steps (0: about 10 times per run).",
        label="validate every (0: auto)",
        minimum=0,
        maximum=10**6,
        advanced=True,
    )
    seed: int = setting(
        0,
        "Random seed: the same data, settings and seed train the same model.",
        minimum=0,
        maximum=2**31 - 1,
        advanced=True,
    )
    freeze_encoder: bool = setting(
        False,
        "Train the heads only (faster; the encoder stays as it is). Off: the whole network "
        "learns, which adapts best to a new microscope (docs/benchmarks.md).",
        label="heads only (encoder frozen)",
        flag="--freeze-encoder",
    )
    tune: bool = setting(
        True,
        "After training, choose the post-processing settings that score best on your "
        "corrected patches (20 objects or more) and keep them with the model.",
        label="tune post-processing on the patches",
        flag="--no-tune",
        advanced=True,
    )
    device: str = setting(
        "auto",
        "Where to train: auto picks a CUDA GPU, then Apple MPS, then the CPU.",
        advanced=True,
    )
    # Not offered in the docks or on the command line (the Python API takes them).
    unfreeze: tuple[str, ...] = ()
    weight_decay: float = 0.1
    pct_start: float = 0.3
    amp: bool = True
    num_workers: int = 0
    keep_best: bool = True
    checkpoint_every: int = 0
    loss: Any = None  # LossWeights (core.training.loss); None: the MitoNet weights

    def __post_init__(self) -> None:
        self._check_booleans()
        for name, low in (("iterations", 1), ("batch_size", 1), ("patch_size", 64),
                          ("val_every", 0), ("seed", 0)):  # fmt: skip
            check_integer(self, name, low)
        check(
            is_finite(self.lr) and 1e-5 <= self.lr <= 0.1,
            f"lr (the learning rate) must be in 1e-05..0.1, got {self.lr!r}",
        )
        check(
            is_finite(self.val_fraction) and 0 <= self.val_fraction <= 0.5,
            f"val_fraction must be in 0..0.5, got {self.val_fraction!r}",
        )
        check(0 < self.pct_start < 1, f"pct_start must be in (0, 1), got {self.pct_start!r}")
        check_integer(self, "checkpoint_every", 0, 10**9)
        unfreeze = self.unfreeze
        if isinstance(unfreeze, str):  # "layer3,layer4" from a command line or a config
            unfreeze = tuple(v.strip() for v in unfreeze.split(",") if v.strip())
            object.__setattr__(self, "unfreeze", unfreeze)
        bad = [v for v in unfreeze if v not in ENCODER_STAGES]
        check(not bad, f"Unknown encoder stage(s) {bad}; choose from {ENCODER_STAGES}.")
        check(
            not unfreeze or self.freeze_encoder,
            "unfreeze names the encoder stages that learn while the rest of the encoder is "
            "frozen: set freeze_encoder=True too (without it the whole network learns).",
        )

    def validate(self) -> TrainSettings:
        """Already checked when made (an invalid object cannot exist); for callers that ask."""
        return self


#: Finetuning a registered model on corrected patches: the measured dock recipe (whole
#: network, 300 steps of 4 at lr 0.001: CDeep3M F1@0.5 0.21 -> 0.63-0.65, fafb 0.32 -> 0.81,
#: 3.5-4.5 min on 2 CPU cores; docs/benchmarks.md, "One training configuration").
FINETUNE = TrainSettings()
#: Training from scratch: longer, larger batches, a higher rate (the Train dock's recipe).
TRAIN = TrainSettings(iterations=1000, batch_size=8, lr=0.003)
PRESETS = {"finetune": FINETUNE, "train": TRAIN}
