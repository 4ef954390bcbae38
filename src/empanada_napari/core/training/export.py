"""Saving a trained model: TorchScript + a config YAML in the original plugin's format,
registered in the model registry (docs/design.md s.2), and the result record of a run."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ModelError
from ..models import MITONET_NORMS, check_name

#: Config keys that describe the files of the model a training run started from (or make it
#: the default): a trained model's config must not inherit them.
BASE_FILE_KEYS = frozenset(
    {
        "model_quantized",
        "model_sha256",
        "model_quantized_sha256",
        "model_size_mb",
        "model_quantized_size_mb",
        "default_model",
    }
)


@dataclass
class TrainResult:
    """What a run produced (``cancelled``: stopped early; the weights saved are the best
    validated so far, or the last ones without validation)."""

    module: Any
    name: str
    model_path: Path | None
    config_path: Path | None
    config: dict
    history: list[dict[str, float]]
    validation: list[dict[str, float]]
    seconds: float
    iterations: int
    best_iteration: int | None = None
    cancelled: bool = False


def export_model(
    module,
    config: dict,
    name: str,
    output_dir: Path | None,
    register: bool,
    registry,
) -> tuple[Path | None, Path | None]:
    """Save TorchScript + YAML (original format) and register the model."""
    check_name(name)  # it names the files: '../x' would write outside ``output_dir``
    if output_dir is None:
        if not register:
            return None, None
        import tempfile

        output_dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = output_dir / f"{name}.pth"
    config_path = output_dir / f"{name}.yaml"
    scripted = module.cpu().eval()  # a ScriptModule (see finish)
    tmp = model_path.with_suffix(".pth.part")
    try:
        torch.jit.save(scripted, str(tmp))
        tmp.replace(model_path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"Could not save the trained model to {model_path}: {err}") from err
    config = {k: v for k, v in config.items() if k not in BASE_FILE_KEYS}
    config["model"] = model_path.name
    with open(config_path, "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    if register:
        from ..models import get_registry

        # The name was checked before training (loops.check_request: a registered name only
        # with overwrite=True); refusing here would throw away the minutes just trained.
        (registry or get_registry()).register(name, config_path, overwrite=True)
    return model_path, config_path


def finetune_block(config: dict, loss) -> dict:
    """The ``FINETUNE`` block of a config, with the loss weights used."""
    block = copy.deepcopy(config.get("FINETUNE") or {})
    block.setdefault("criterion", "PanopticLoss")
    block["criterion_params"] = {
        "ce_weight": loss.ce_weight,
        "l1_weight": loss.l1_weight,
        "mse_weight": loss.mse_weight,
        "pr_weight": loss.pr_weight,
        "top_k_percent": loss.top_k_percent,
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
            "thing_list": list(config.get("thing_list", [1])),
            "void_label": 0,
        },
    )
    return block


def complete_config(config: dict, module) -> dict:
    """A copy of ``config`` with the keys every model config needs filled in."""
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


def finish(module, config, name, output_dir, register, registry, outcome, seconds) -> TrainResult:
    """Unfreeze, script if needed, save + register, and package the result."""
    for p in module.parameters():
        p.requires_grad_(True)  # a saved model must be finetunable again as a whole
    if not isinstance(module, torch.jit.ScriptModule):
        module = torch.jit.script(module.cpu().eval())
    model_path, config_path = export_model(module, config, name, output_dir, register, registry)
    return TrainResult(
        module,
        name,
        model_path,
        config_path,
        config,
        outcome.history,
        outcome.validation,
        seconds,
        outcome.iterations_done,
        outcome.best_iteration,
        outcome.cancelled,
    )
