"""Finetuning and training entry points (docs/design.md s.4).

* :func:`finetune` trains a TorchScript model (e.g. MitoNet_v1 or the bundled model) in
  place, with the encoder frozen by default and chosen ResNet stages unfrozen on request.
* :func:`train` builds one of the package's architectures and trains it from scratch,
  optionally from the CEM1.5M SwAV ResNet-50 encoder weights, for one or several classes.

Both take a :class:`~.dataset.PatchDataset` or dataset folders (checked in words first by
:func:`~.store.check_dataset`), run :func:`~.runner.run_loop` and save TorchScript + a config
YAML in the original empanada-napari format, registered under ``name``
(:mod:`.export`). Cancelling saves the best validated weights as ``<name>_cancelled`` and
raises :class:`~.runner.TrainingCancelled` carrying that result; a run cancelled before its
first validation keeps nothing (plain :class:`~..errors.Cancelled`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, InputError
from ..jobs import Progress
from ..models import CEM_URL as CEM_URL  # importable from here as before
from ..models import (
    MITONET_NORMS,
    LoadedModel,
    load_encoder_weights,
    load_torchscript,
    resolve_model,
)
from ..settings import TUNED_KEY
from ..train_settings import FINETUNE, TRAIN
from .export import TrainResult, complete_config, finetune_block, finish
from .loss import LossWeights
from .runner import (
    ENCODER_STAGES,
    TrainingCancelled,
    TrainSettings,
    run_loop,
    seed_everything,
    set_trainable,
    validate_model,
)

__all__ = [
    "CEM_URL",
    "ENCODER_STAGES",
    "TrainResult",
    "TrainSettings",
    "TrainingCancelled",
    "finetune",
    "load_encoder_weights",
    "train",
    "validate_model",
]

Val = tuple[Sequence[np.ndarray], Sequence[np.ndarray]]


def check_request(
    name: str,
    output_dir,
    patch_size: int,
    batch_size: int,
    *,
    register: bool = True,
    overwrite: bool = False,
    registry=None,
    field: str = "name",
    replace_hint: str = "pass overwrite=True",
) -> None:
    """What can be refused before a minute is trained or a file written: the model's name
    (it names files and the registry entry: the registry's own rule; when the model is to be
    registered, a name already taken unless ``overwrite``, see :mod:`..models.naming`), an
    output folder that is a file, and patches whose batch cannot fit in memory. ``field``
    and ``replace_hint`` word the name's refusal for the caller's user."""
    from ..models import check_name, name_problem
    from .dataset import check_patch_memory

    check_name(name)
    taken = register and name_problem(
        name, registry, overwrite=overwrite, field=field, replace_hint=replace_hint
    )
    if taken:
        raise InputError(taken)
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise InputError(
            f"The output (--output, output_dir) {output_dir} is a file; give a folder for the "
            "model's .pth and .yaml."
        )
    check_patch_memory(patch_size, batch_size)


def _resolve_settings(
    settings: TrainSettings | None, overrides: dict, preset: TrainSettings = FINETUNE
) -> TrainSettings:
    """``settings`` (default: ``preset``) with the keyword ``overrides``, checked."""
    return replace(settings or preset, **overrides)


def _as_dataset(dataset, val: Val | None, settings: TrainSettings, classes):
    """A dataset folder (or several) becomes a checked PatchDataset and, unless ``val`` is
    given, a held-out validation split; a PatchDataset is used as it is."""
    if isinstance(dataset, (str, os.PathLike)) or (
        isinstance(dataset, (list, tuple))
        and dataset
        and isinstance(dataset[0], (str, os.PathLike))
    ):
        from .store import load_training_data

        data = load_training_data(
            dataset,
            val_fraction=settings.val_fraction,
            patch_size=settings.patch_size,
            batch_size=settings.batch_size,
            seed=settings.seed,
            classes=classes,
        )
        return data.dataset, val if val is not None else data.val
    if len(dataset) == 0:
        raise InputError("The training dataset is empty.")
    return dataset, val


@dataclass
class _Job:
    """Where a run's result goes and how the caller follows it."""

    name: str
    output_dir: str | Path | None
    register: bool
    registry: Any
    val: Val | None
    progress: Progress | None
    cancel: Any
    tune_on: Val | None = None  # corrected patches to choose post-processing settings on
    overwrite: bool = False  # replace a registered model of the same name (asked for)


def _train_and_save(module, dataset, settings, device, config, job: _Job, describe):
    """Shared by finetune and train: FINETUNE block, freezing, the loop, the description
    (``describe(iterations, seconds)``), then save + register, or raise on cancel."""
    config["FINETUNE"] = finetune_block(config, settings.loss or LossWeights())
    frozen = set_trainable(module, settings.freeze_encoder, settings.unfreeze)
    # A TorchScript module checkpoints as TorchScript (.pth), an eager one as a state dict.
    ext = "pth" if isinstance(module, torch.jit.ScriptModule) else "pt"
    checkpoint = Path(job.output_dir) / f"{job.name}.checkpoint.{ext}" if job.output_dir else None
    if job.val is not None and settings.val_every == 0:
        settings = replace(settings, val_every=max(10, settings.iterations // 10))
    start = time.perf_counter()
    outcome = run_loop(
        module,
        dataset,
        settings,
        device,
        config,
        val=job.val,
        progress=job.progress,
        cancel=job.cancel,
        checkpoint=checkpoint,
        frozen=frozen,
    )
    if outcome.cancelled and outcome.iterations_done == 0:
        raise Cancelled("Training cancelled before the first iteration: no model was saved.")
    if outcome.cancelled and outcome.best_iteration is None:
        # A model never checked on held-out patches would become a trap: the next finetune
        # or segmentation could start from a few iterations of noise without anyone knowing.
        raise Cancelled(
            f"Training cancelled after {outcome.iterations_done} of {settings.iterations} "
            "iterations, before its first validation: nothing was kept. Hold out patches for "
            "validation (or validate more often) to keep the best model of a cancelled run."
        )
    if outcome.cancelled:  # its name says so, wherever it is listed or picked
        cancelled = f"{job.name}_cancelled"
        if job.register and not job.overwrite:  # an earlier cancelled run's model stays
            from ..models import free_name

            cancelled = free_name(cancelled, job.registry)
        job = replace(job, name=cancelled)
    tuned = None
    if job.tune_on and not outcome.cancelled:
        tuned = _tune(module, config, device, job, outcome.iterations_done)
        outcome.cancelled = tuned is None  # cancelled while tuning: save the weights as is
    seconds = time.perf_counter() - start
    text = describe(outcome.iterations_done, seconds)
    if isinstance(tuned, str):
        text += f" Post-processing not tuned: {tuned}"
    elif tuned is not None:
        config[TUNED_KEY] = tuned.settings
        text += f" {tuned.describe()}"
    if outcome.cancelled:
        kept = "its start model's" if config.get(TUNED_KEY) else "the default"
        text += (
            f" Cancelled after {outcome.iterations_done} of {settings.iterations} iterations; "
            f"post-processing not tuned ({kept} settings)."
        )
    if outcome.best_iteration is not None:
        text += (
            f" Best validation F1@0.5 {outcome.best_score:.3f} at iteration "
            f"{outcome.best_iteration}."
        )
    config["description"] = text
    result = finish(
        module, config, job.name, job.output_dir, job.register, job.registry, outcome, seconds
    )
    if outcome.cancelled:
        raise TrainingCancelled(
            f"Training cancelled after {outcome.iterations_done} of {settings.iterations} "
            f"iterations; the best validated weights (iteration {outcome.best_iteration}) are "
            f"saved as model '{job.name}'.",
            result,
        )
    return result


def _tune(module, config: dict, device, job: _Job, done: int):
    """Choose the post-processing settings on ``job.tune_on`` (:mod:`.tuning`): a
    TuningResult, why not (str), or None when cancelled."""
    from ..jobs import report
    from .tuning import tune_settings

    # Same keys as an iteration's record (callers read them), plus what is happening.
    stage = {"stage": "choosing post-processing settings on the patches"}
    stage |= {"iteration": done, "eta_s": 0.0}
    module.eval()
    loaded = LoadedModel.from_config(
        job.name, module, device, Path("<in-memory>"), config, supports_batch=True
    )
    try:
        return tune_settings(
            loaded,
            *job.tune_on,
            cancel=job.cancel,
            started=lambda: report(job.progress, done, done, stage),
        )
    except Cancelled:
        return None
    except InputError as why:  # too few objects: the defaults stay, and the user is told
        return str(why)


def _tuning_pairs(dataset, val: Val | None) -> Val | None:
    """Every corrected patch (2D plane, instance mask): the training records and the
    validation pairs; None for datasets without records (in-memory samples)."""
    records = getattr(dataset, "records", None)
    if not records:
        return None
    images = [r.image for r in records] + list(val[0] if val else [])
    masks = [r.mask for r in records] + list(val[1] if val else [])
    return images, masks


def finetune(
    model: str | Path | LoadedModel | torch.jit.ScriptModule,
    dataset,
    *,
    name: str,
    settings: TrainSettings | None = None,
    val: Val | None = None,
    output_dir: str | Path | None = None,
    register: bool = True,
    overwrite: bool = False,
    registry=None,
    progress: Progress | None = None,
    cancel=None,
    **overrides: Any,
) -> TrainResult:
    """Finetune a TorchScript model on ``dataset`` in place, save it and register it.

    ``dataset`` is a :class:`PatchDataset` or one or more dataset folders (checked first; a
    held-out split validates the model unless ``val`` = (images, masks) is given; folders
    are cut into ``patch_size`` training patches). ``settings`` default to the finetuning
    preset (:data:`~empanada_napari.core.train_settings.FINETUNE`: the whole network, 300 steps of
    4 at lr 0.001); keyword ``overrides`` are its fields. A registry name, file or
    :class:`LoadedModel` is re-read from its file, so the cached copy used for inference is
    not modified; a ScriptModule is trained as given. ``freeze_encoder=True`` trains the
    heads only; ``unfreeze=("layer4",)`` also trains chosen ResNet stages. Cancel
    saves the best validated weights as ``<name>_cancelled`` and raises
    :class:`TrainingCancelled` with the result (nothing is kept before a first validation).
    A ``name`` already registered is refused before training unless ``overwrite``; a
    cancelled run's ``<name>_cancelled`` never replaces an earlier one (it gets ``_2``...).
    """
    from ..device import resolve_device

    settings = _resolve_settings(settings, overrides)
    check_request(
        name,
        output_dir,
        settings.patch_size,
        settings.batch_size,
        register=register,
        overwrite=overwrite,
        registry=registry,
    )
    dataset, val = _as_dataset(dataset, val, settings, None)
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
    config = complete_config(config, module)
    tune_on = _tuning_pairs(dataset, val) if settings.tune else None
    job = _Job(name, output_dir, register, registry, val, progress, cancel, tune_on, overwrite)
    n = len(getattr(dataset, "records", dataset))
    # The start model is named, not its description repeated: finetuning a finetuned model
    # would otherwise pile up every earlier run's sentences.
    return _train_and_save(
        module,
        dataset,
        settings,
        device,
        config,
        job,
        lambda its, s: (
            f"{base} finetuned for {its} iterations (batch {settings.batch_size}) on {n} "
            f"patches in {s / 60:.1f} min on {device}."
        ),
    )


def _class_config(classes: Mapping[str, str] | None) -> tuple[dict, list[int], list[int], int]:
    """``class_names``, ``labels``, ``thing_list`` and the network's output channels for a
    class list {name: "instance" | "semantic"} (one class: a sigmoid output)."""
    if not classes:
        return {1: "mito"}, [1], [1], 1
    kinds = {str(k): str(v).lower() for k, v in dict(classes).items()}
    bad = {k: v for k, v in kinds.items() if v not in ("instance", "semantic")}
    if bad:
        raise InputError(f"Class kinds must be 'instance' or 'semantic', got {bad}.")
    names = {i: n for i, n in enumerate(kinds, start=1)}
    labels = list(names)
    things = [i for i, n in names.items() if kinds[n] == "instance"]
    channels = 1 if len(labels) == 1 else len(labels) + 1  # + background for softmax
    return names, labels, things, channels


def train(
    architecture: str,
    dataset,
    *,
    name: str,
    encoder: str | None = None,
    arch_kwargs: dict | None = None,
    pretrained: str | Path | None = None,
    classes: Mapping[str, str] | None = None,
    settings: TrainSettings | None = None,
    val: Val | None = None,
    output_dir: str | Path | None = None,
    register: bool = True,
    overwrite: bool = False,
    registry=None,
    description: str = "",
    progress: Progress | None = None,
    cancel=None,
    **overrides: Any,
) -> TrainResult:
    """Train ``architecture`` (see :func:`list_architectures`) from scratch on ``dataset``.

    ``classes`` maps class names to ``"instance"`` or ``"semantic"`` (default: one instance
    class, mitochondria); with several classes the masks hold ``class * 1000 + instance``
    (see :func:`~.store.load_training_data`). With ``pretrained`` (a path, URL or
    ``"cem1.5m"``) the ResNet encoder starts from those weights. The trained model is
    scripted, saved and registered as ``name`` (a name already registered is refused before
    training unless ``overwrite``); cancel keeps the best validated weights as
    ``<name>_cancelled``.
    """
    from ..device import resolve_device
    from ..models import build_model

    settings = _resolve_settings(settings, overrides, TRAIN)
    check_request(
        name,
        output_dir,
        settings.patch_size,
        settings.batch_size,
        register=register,
        overwrite=overwrite,
        registry=registry,
    )
    class_names, labels, things, channels = _class_config(classes)
    dataset, val = _as_dataset(dataset, val, settings, classes)
    device = resolve_device(settings.device)
    seed_everything(settings.seed)
    try:
        module = build_model(
            architecture, encoder=encoder, num_classes=channels, **(arch_kwargs or {})
        )
    except ValueError as err:
        raise InputError(str(err)) from err
    encoder = str(getattr(module, "encoder_name", encoder))
    norms = dict(MITONET_NORMS)
    if pretrained is not None:
        norms = load_encoder_weights(module, pretrained, registry=registry)
    module = module.to(device)
    config = complete_config(
        {"norms": norms, "class_names": class_names, "labels": labels, "thing_list": things},
        module,
    )
    config["architecture"] = architecture
    config["encoder"] = encoder
    if arch_kwargs:
        config["architecture_params"] = dict(arch_kwargs)
    job = _Job(name, output_dir, register, registry, val, progress, cancel, overwrite=overwrite)
    params = sum(p.numel() for p in module.parameters())
    return _train_and_save(
        module,
        dataset,
        settings,
        device,
        config,
        job,
        lambda its, s: (
            (description.strip() + " " if description else "")
            + f"{architecture} ({encoder} encoder, {params / 1e6:.1f} M parameters) trained "
            f"from {'scratch' if pretrained is None else 'CEM1.5M encoder weights'} for {its} "
            f"iterations of batch {settings.batch_size} on {device} ({s / 60:.1f} min)."
        ),
    )
