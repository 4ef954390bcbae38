"""The training loop shared by finetuning and training from scratch (docs/design.md s.4).

AdamW (weight decay on weights only), one-cycle learning rate, AMP on CUDA, deterministic
seeding, a validation score every ``val_every`` iterations with the best weights kept in
memory, a progress callback with the losses, the validation scores and an ETA, and a cancel
flag checked between iterations. Cancelling stops the loop and hands back what was learned
so far (the best weights), which :mod:`.loops` saves as a loadable model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, InputError, ModelError
from ..jobs import Progress, is_cancelled, report
from ..models import LoadedModel
from ..train_settings import ENCODER_STAGES, TrainSettings
from .loss import PanopticLoss


@dataclass
class LoopOutcome:
    """What the loop did: per-iteration records, validation scores, best weights."""

    history: list[dict[str, float]]
    validation: list[dict[str, float]]
    iterations_done: int
    best_iteration: int | None = None
    best_score: float | None = None
    cancelled: bool = False


def seed_everything(seed: int) -> None:
    """Seed torch (initial weights, point sampling); datasets carry their own numpy seeds."""
    torch.manual_seed(seed)


def set_trainable(module, freeze_encoder: bool, unfreeze: Sequence[str]) -> list[Any]:
    """Set requires_grad; return the frozen submodules (kept in eval mode for BN stats)."""
    for p in module.parameters():
        p.requires_grad_(True)
    if not freeze_encoder:
        return []
    from ..models import encoder_stage_modules

    try:
        stages = encoder_stage_modules(module)
    except (ValueError, AttributeError) as err:
        raise ModelError(
            f"Cannot freeze the encoder of this model by ResNet stage ({err}); finetune it "
            "with freeze_encoder=False."
        ) from err
    frozen = []
    for stage, mods in stages.items():
        if stage in unfreeze:
            continue
        for m in mods:
            for p in m.parameters():
                p.requires_grad_(False)
            frozen.append(m)
    return frozen


def _param_groups(module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)  # biases and norm scales: no decay
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _batches(dataset, batch_size: int, num_workers: int, seed: int):
    """Endless iterator of collated batches, reshuffled (and re-augmented) every epoch."""
    from torch.utils.data import DataLoader

    if len(dataset) == 0:
        raise InputError("The training dataset is empty.")
    epoch = 0
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 1000003 + epoch)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(dataset) >= batch_size,
            num_workers=num_workers,
            generator=gen,
            persistent_workers=False,
        )
        yield from loader
        epoch += 1


def validate_model(
    module,
    config: dict,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    device: torch.device,
    **engine_params: Any,
) -> dict[str, float]:
    """2D scores of ``module`` on validation images (per image, pooled): F1@0.5, IoU, PQ."""
    from ..inference.engine import Engine2D
    from ..metrics import evaluate

    if len(images) == 0:
        raise InputError("No validation images.")
    was_training = module.training
    module.eval()
    loaded = LoadedModel.from_config(
        "validation", module, device, Path("<in-memory>"), config, supports_batch=True
    )
    try:
        engine = Engine2D(loaded, **engine_params)
        preds = [engine.segment(img) for img in images]
    finally:
        module.train(was_training)
    pred = np.stack(preds) if len({p.shape for p in preds}) == 1 else None
    if pred is not None:
        truth = np.stack([np.asarray(m) for m in masks]).astype(np.int64)
        scores = evaluate(pred.astype(np.int64), truth, per_slice=True)
    else:  # images of different sizes: average per image
        per = [
            evaluate(p.astype(np.int64), np.asarray(m).astype(np.int64))
            for p, m in zip(preds, masks, strict=True)
        ]
        scores = {k: float(np.mean([s[k] for s in per])) for k in per[0]}
    return {k: scores[k] for k in ("f1@0.5", "semantic_iou", "pq", "ap@0.5") if k in scores}


def save_checkpoint(module, path: Path) -> None:
    """Write ``module`` (TorchScript, or an eager module's state dict) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, str(tmp))
    else:
        torch.save(module.state_dict(), str(tmp))
    tmp.replace(path)


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_mode(module, frozen: list) -> None:
    """Training mode, frozen stages in eval mode (their BN statistics stay as trained)."""
    module.train()
    for m in frozen:
        m.eval()


def run_loop(
    module,
    dataset,
    settings: TrainSettings,
    device: torch.device,
    config: dict,
    *,
    val: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None,
    progress: Progress | None,
    cancel,
    checkpoint: Path | None,
    frozen: list,
) -> LoopOutcome:
    """Train ``module`` in place; on return it holds the weights to export (the best
    validated ones when ``keep_best`` and validation ran, else the last)."""
    criterion = PanopticLoss(settings.loss)
    params = _param_groups(module, settings.weight_decay)
    if not any(g["params"] for g in params):
        raise InputError("Nothing to train: every parameter is frozen.")
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.lr, total_steps=settings.iterations, pct_start=settings.pct_start
    )
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    out = LoopOutcome([], [], 0)
    best_state: dict[str, torch.Tensor] | None = None
    batches = _batches(dataset, settings.batch_size, settings.num_workers, settings.seed)
    validating = val is not None and settings.val_every > 0
    n_val = settings.iterations // settings.val_every if validating else 0
    step_times: list[float] = []
    val_time = 0.0
    _train_mode(module, frozen)
    # TorchScript's profiling executor is kept: without it (torch.jit.optimized_execution
    # (False)) an iteration costs 2.4x the CPU time, and the eager module about 4x (measured,
    # docs/benchmarks.md); its cost is a slower first and third iteration only.
    for it in range(1, settings.iterations + 1):
        if is_cancelled(cancel):
            out.cancelled = True
            break
        t0 = time.perf_counter()
        images, targets = next(batches)
        images = images.to(device, non_blocking=True)
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            outputs = module(images, 2, True)
        losses = criterion(outputs, targets)
        if not torch.isfinite(losses["total"]):
            raise ModelError(
                f"The loss became {float(losses['total'])} at iteration {it}; "
                "lower the learning rate."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step_times.append(time.perf_counter() - t0)
        record = {k: float(v.detach()) for k, v in losses.items()}
        record["lr"] = float(scheduler.get_last_lr()[0])
        record["iteration"] = it
        out.history.append(record)
        out.iterations_done = it
        if validating and it % settings.val_every == 0:
            t1 = time.perf_counter()
            scores = validate_model(module, config, val[0], val[1], device)
            val_time += time.perf_counter() - t1
            _train_mode(module, frozen)
            scores["iteration"] = it
            out.validation.append(scores)
            record.update({f"val_{k}": v for k, v in scores.items() if k != "iteration"})
            if out.best_score is None or scores["f1@0.5"] > out.best_score:
                out.best_score, out.best_iteration = scores["f1@0.5"], it
                if settings.keep_best:
                    best_state = _snapshot(module)
        if checkpoint is not None and settings.checkpoint_every:
            if it % settings.checkpoint_every == 0:
                save_checkpoint(module, checkpoint)
        record["eta_s"] = _eta(step_times, settings.iterations - it, val_time, out, n_val)
        report(progress, it, settings.iterations, record)
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return out


def _eta(step_times: list[float], left: int, val_time: float, out: LoopOutcome, n_val: int):
    """Seconds left: the median recent step time (the first steps are slower) times the
    steps left, plus the validations left at their mean cost."""
    recent = step_times[-20:] if len(step_times) > 3 else step_times
    per_val = val_time / len(out.validation) if out.validation else 0.0
    return float(np.median(recent) * left + per_val * max(0, n_val - len(out.validation)))


class TrainingCancelled(Cancelled):
    """Training stopped by its cancel flag; ``result`` is the model saved from what was
    learned so far (None when nothing was)."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


__all__ = [
    "ENCODER_STAGES",
    "LoopOutcome",
    "TrainSettings",
    "TrainingCancelled",
    "run_loop",
    "save_checkpoint",
    "seed_everything",
    "set_trainable",
    "validate_model",
]
