"""Finetuning and training loops (DESIGN.md s.5).

* :func:`finetune` trains a TorchScript model (e.g. MitoNet_v1 or the bundled model) in
  place, with the encoder frozen by default and chosen ResNet stages unfrozen on request.
* :func:`train` builds one of the package's architectures and trains it from scratch,
  optionally from the CEM1.5M SwAV ResNet-50 encoder weights.

Both use AdamW (weight decay on weights only, none on biases/norms), a one-cycle learning
rate, AMP on CUDA, deterministic seeding, optional checkpoints and validation, a progress
callback and a cancel flag checked between iterations; both save TorchScript + a config YAML
in the original empanada-napari format and register the model.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..errors import Cancelled, InputError, ModelError
from ..jobs import Progress, is_cancelled
from ..models.encoder_weights import CEM_URL as CEM_URL  # importable from here as before
from ..models.encoder_weights import load_encoder_weights
from ..models.loading import MITONET_NORMS, LoadedModel, load_torchscript, resolve_model
from .loss import LossWeights, PanopticLoss

ENCODER_STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


@dataclass
class TrainSettings:
    """Hyper-parameters of a training or finetuning run."""

    iterations: int = 500
    batch_size: int = 16
    lr: float = 0.003
    weight_decay: float = 0.1
    pct_start: float = 0.3
    amp: bool = True
    seed: int = 0
    freeze_encoder: bool = True
    unfreeze: tuple[str, ...] = ()
    num_workers: int = 0
    val_every: int = 0
    checkpoint_every: int = 0
    device: str = "auto"
    loss: LossWeights = field(default_factory=LossWeights)

    def validate(self) -> TrainSettings:
        if self.iterations < 1:
            raise InputError("iterations must be >= 1")
        if self.batch_size < 1:
            raise InputError("batch_size must be >= 1")
        if not (0 < self.lr < 1):
            raise InputError("lr must be in (0, 1)")
        if not (0 < self.pct_start < 1):
            raise InputError("pct_start must be in (0, 1)")
        bad = [s for s in self.unfreeze if s not in ENCODER_STAGES]
        if bad:
            raise InputError(f"Unknown encoder stage(s) {bad}; choose from {ENCODER_STAGES}.")
        return self


@dataclass
class TrainResult:
    """What a run produced."""

    module: Any
    name: str
    model_path: Path | None
    config_path: Path | None
    config: dict
    history: list[dict[str, float]]
    validation: list[dict[str, float]]
    seconds: float
    iterations: int


def seed_everything(seed: int) -> None:
    """Seed torch (initial weights, point sampling); datasets carry their own numpy seeds."""
    torch.manual_seed(seed)


def _set_trainable(module, freeze_encoder: bool, unfreeze: Sequence[str]) -> list[Any]:
    """Set requires_grad; return the frozen submodules (kept in eval mode for BN stats)."""
    for p in module.parameters():
        p.requires_grad_(True)
    if not freeze_encoder:
        return []
    from ..models.architectures.resnet import encoder_stage_modules

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


def _run(
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
) -> tuple[list[dict], list[dict]]:
    criterion = PanopticLoss(settings.loss)
    params = _param_groups(module, settings.weight_decay)
    if not any(g["params"] for g in params):
        raise InputError("Nothing to train: every parameter is frozen.")
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.lr,
        total_steps=settings.iterations,
        pct_start=settings.pct_start,
    )
    use_amp = settings.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict] = []
    validation: list[dict] = []
    batches = _batches(dataset, settings.batch_size, settings.num_workers, settings.seed)
    module.train()
    for m in frozen:
        m.eval()
    for it in range(1, settings.iterations + 1):
        if is_cancelled(cancel):
            if checkpoint is not None:
                _save_checkpoint(module, checkpoint)
            raise Cancelled(
                f"Training cancelled after {it - 1} of {settings.iterations} iterations."
            )
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
        record = {k: float(v.detach()) for k, v in losses.items()}
        record["lr"] = float(scheduler.get_last_lr()[0])
        record["iteration"] = it
        history.append(record)
        if val is not None and settings.val_every and it % settings.val_every == 0:
            scores = validate_model(module, config, val[0], val[1], device)
            scores["iteration"] = it
            validation.append(scores)
            record.update({f"val_{k}": v for k, v in scores.items() if k != "iteration"})
        if (
            checkpoint is not None
            and settings.checkpoint_every
            and (it % settings.checkpoint_every == 0)
        ):
            _save_checkpoint(module, checkpoint)
        if progress is not None:
            progress(it, settings.iterations, record)
    module.eval()
    return history, validation


def _save_checkpoint(module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    if isinstance(module, torch.jit.ScriptModule):
        torch.jit.save(module, str(tmp))
    else:
        torch.save(module.state_dict(), str(tmp))
    tmp.replace(path)


def _export(
    module,
    config: dict,
    name: str,
    output_dir: Path | None,
    register: bool,
    registry,
) -> tuple[Path | None, Path | None]:
    """Save TorchScript + YAML (original format) and register the model."""
    if output_dir is None:
        if not register:
            return None, None
        import tempfile

        output_dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / f"{name}.pth"
    config_path = output_dir / f"{name}.yaml"
    scripted = module.cpu().eval()  # a ScriptModule (see _finish)
    tmp = model_path.with_suffix(".pth.part")
    try:
        torch.jit.save(scripted, str(tmp))
        tmp.replace(model_path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"Could not save the trained model to {model_path}: {err}") from err
    config = dict(config)
    config["model"] = model_path.name
    config.pop("model_quantized", None)
    for key in (
        "model_sha256",
        "model_quantized_sha256",
        "model_size_mb",
        "model_quantized_size_mb",
    ):
        config.pop(key, None)  # they described the original model's files
    config.pop("default_model", None)
    with open(config_path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    if register:
        from ..models.registry import get_registry

        (registry or get_registry()).register(name, config_path, overwrite=True)
    return model_path, config_path


def _finetune_block(config: dict, settings: TrainSettings) -> dict:
    block = copy.deepcopy(config.get("FINETUNE") or {})
    block.setdefault("criterion", "PanopticLoss")
    block["criterion_params"] = {
        "ce_weight": settings.loss.ce_weight,
        "l1_weight": settings.loss.l1_weight,
        "mse_weight": settings.loss.mse_weight,
        "pr_weight": settings.loss.pr_weight,
        "top_k_percent": settings.loss.top_k_percent,
    }
    block.setdefault("dataset_class", "SingleClassInstanceDataset")
    block.setdefault("dataset_params", {"weight_gamma": 0.7})
    block.setdefault("engine", "PanopticDeepLabEngine")
    block.setdefault(
        "engine_params",
        {
            "confidence_thr": 0.5,
            "label_divisor": 1000,
            "nms_kernel": 7,
            "nms_threshold": 0.1,
            "stuff_area": 64,
            "thing_list": [1],
            "void_label": 0,
        },
    )
    return block


def _resolve_settings(settings: TrainSettings | None, overrides: dict) -> TrainSettings:
    settings = replace(settings or TrainSettings(), **overrides)
    if isinstance(settings.unfreeze, str):
        settings = replace(
            settings, unfreeze=tuple(s.strip() for s in settings.unfreeze.split(",") if s.strip())
        )
    return settings.validate()


def _train_and_time(
    module, dataset, settings, device, config, name, output_dir, val, progress, cancel
) -> tuple[list[dict], list[dict], float]:
    """Shared by finetune and train: FINETUNE block, freezing, the loop, its duration."""
    config["FINETUNE"] = _finetune_block(config, settings)
    frozen = _set_trainable(module, settings.freeze_encoder, settings.unfreeze)
    # A TorchScript module checkpoints as TorchScript (.pth), an eager one as a state dict.
    ext = "pth" if isinstance(module, torch.jit.ScriptModule) else "pt"
    checkpoint = Path(output_dir) / f"{name}.checkpoint.{ext}" if output_dir else None
    start = time.perf_counter()
    history, validation = _run(
        module,
        dataset,
        settings,
        device,
        config,
        val=val,
        progress=progress,
        cancel=cancel,
        checkpoint=checkpoint,
        frozen=frozen,
    )
    return history, validation, time.perf_counter() - start


def _finish(
    module, config, name, output_dir, register, registry, history, validation, seconds, settings
) -> TrainResult:
    """Unfreeze, script if needed, save + register, and package the result."""
    for p in module.parameters():
        p.requires_grad_(True)  # a saved model must be finetunable again as a whole
    if not isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.script(module.cpu().eval())
    model_path, config_path = _export(module, config, name, output_dir, register, registry)
    return TrainResult(
        module,
        name,
        model_path,
        config_path,
        config,
        history,
        validation,
        seconds,
        settings.iterations,
    )


def finetune(
    model: str | Path | LoadedModel | torch.jit.ScriptModule,
    dataset,
    *,
    name: str,
    settings: TrainSettings | None = None,
    val: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    output_dir: str | Path | None = None,
    register: bool = True,
    registry=None,
    progress: Progress | None = None,
    cancel=None,
    **overrides: Any,
) -> TrainResult:
    """Finetune a TorchScript model on ``dataset`` (a :class:`PatchDataset`), in place.

    A registry name, file or :class:`LoadedModel` is re-read from its file first, so the
    cached copy used for inference is not modified; a ScriptModule is trained as given.
    The encoder is frozen unless ``freeze_encoder=False``; ``unfreeze=("layer4",)`` trains
    chosen ResNet stages. Returns a :class:`TrainResult`; the model is saved and registered
    as ``name``.
    """
    from ..device import resolve_device

    settings = _resolve_settings(settings, overrides)
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    if isinstance(model, torch.jit.ScriptModule):
        module, config, base = model.to(device), {}, getattr(model, "original_name", "model")
    else:
        if isinstance(model, LoadedModel):
            path, config, base = model.path, dict(model.config), model.name
        else:
            base, path, config = resolve_model(model, registry)
        module = load_torchscript(path, device)
    config = _complete_config(config, module)
    history, validation, seconds = _train_and_time(
        module, dataset, settings, device, config, name, output_dir, val, progress, cancel
    )
    n = len(dataset)
    config["description"] = (
        f"{base} finetuned for {settings.iterations} iterations (batch {settings.batch_size}) "
        f"on {n} samples in {seconds / 60:.1f} min on {device}. "
        + str(config.get("description", "")).strip()
    ).strip()
    return _finish(
        module,
        config,
        name,
        output_dir,
        register,
        registry,
        history,
        validation,
        seconds,
        settings,
    )


def _complete_config(config: dict, module) -> dict:
    config = copy.deepcopy(config)
    config.setdefault("class_names", {1: "mito"})
    config.setdefault("labels", [1])
    config.setdefault("thing_list", [1])
    config.setdefault("padding_factor", int(getattr(module, "padding_factor", 16)))
    config.setdefault("norms", dict(MITONET_NORMS))
    arch = getattr(module, "architecture", None)
    if isinstance(arch, str):
        config.setdefault("architecture", arch)
    return config


def train(
    architecture: str,
    dataset,
    *,
    name: str,
    encoder: str | None = None,
    arch_kwargs: dict | None = None,
    pretrained: str | Path | None = None,
    settings: TrainSettings | None = None,
    val: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    output_dir: str | Path | None = None,
    register: bool = True,
    registry=None,
    description: str = "",
    progress: Progress | None = None,
    cancel=None,
    **overrides: Any,
) -> TrainResult:
    """Train ``architecture`` (see :func:`list_architectures`) from scratch on ``dataset``.

    With ``pretrained`` (a path, URL or ``"cem1.5m"``) the ResNet encoder starts from those
    weights. The trained model is scripted, saved and registered as ``name``.
    """
    from ..device import resolve_device
    from ..models.architectures import build_model

    overrides.setdefault("freeze_encoder", False)
    settings = _resolve_settings(settings, overrides)
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    try:
        module = build_model(architecture, encoder=encoder, **(arch_kwargs or {}))
    except ValueError as err:
        raise InputError(str(err)) from err
    encoder = str(getattr(module, "encoder_name", encoder))
    norms = dict(MITONET_NORMS)
    if pretrained is not None:
        norms = load_encoder_weights(module, pretrained, registry=registry)
    module = module.to(device)
    config = _complete_config({"norms": norms}, module)
    config["architecture"] = architecture
    config["encoder"] = encoder
    if arch_kwargs:
        config["architecture_params"] = dict(arch_kwargs)
    history, validation, seconds = _train_and_time(
        module, dataset, settings, device, config, name, output_dir, val, progress, cancel
    )
    params = sum(p.numel() for p in module.parameters())
    config["description"] = (description.strip() + " " if description else "") + (
        f"{architecture} ({encoder} encoder, {params / 1e6:.1f} M parameters) trained from "
        f"{'scratch' if pretrained is None else 'CEM1.5M encoder weights'} for "
        f"{settings.iterations} iterations of batch {settings.batch_size} on {device} "
        f"({seconds / 60:.1f} min)."
    )
    return _finish(
        module,
        config,
        name,
        output_dir,
        register,
        registry,
        history,
        validation,
        seconds,
        settings,
    )
