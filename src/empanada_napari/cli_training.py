"""``empanada-napari finetune | train``: models trained on a dataset folder, from the command line.

Both read a dataset in the format of docs/models.md (checked in words first), show a progress
bar with the loss, save the model (TorchScript + YAML), register it and print a JSON summary.
"""

from __future__ import annotations

import json
import sys

#: Steps measured before the run's length is said (the first ones cost more: warm-up).
WARM_UP = 3


def run_time_line(done: int, total: int, eta_s: float) -> str:
    """'This run: about 4 min (300 steps, 0.8 s each on this machine).'"""
    per_step = eta_s / max(1, total - done)
    minutes = (eta_s + per_step * done) / 60
    length = f"{minutes:.0f} min" if minutes >= 1.5 else f"{minutes * 60:.0f} s"
    return (
        f"This run: about {length} ({total} steps, {per_step:.1f} s each measured on this "
        "machine; Ctrl+C stops it)."
    )


def add_training(sub, model_help: str) -> None:
    """The ``finetune`` and ``train`` sub-commands (``model_help``: the --model help text)."""
    _add_finetune(sub, model_help)
    _add_train(sub)


#: TrainSettings fields each command offers (the rest keep the preset's values).
_FIELDS = {
    "finetune": ("iterations", "batch_size", "lr", "patch_size", "val_fraction", "val_every",
                 "seed", "freeze_encoder", "tune", "device"),
    "train": ("iterations", "batch_size", "lr", "patch_size", "val_fraction", "val_every",
              "seed", "device"),
}  # fmt: skip


def _add_training_args(p, kind: str) -> None:
    """Options common to finetune and train; the TrainSettings ones are built from
    :class:`~empanada_napari.core.train_settings.TrainSettings` with the ``kind`` preset's
    defaults (shown in ``--help``)."""
    from .core.settings import cli_flag, setting_fields, tooltip
    from .core.train_settings import PRESETS, TrainSettings

    p.add_argument(
        "--data", required=True, help="dataset folder (<data>/<source>/images|masks/<name>.tiff)"
    )
    p.add_argument(
        "--name",
        required=True,
        help="register the trained model under this name (a name already registered is "
        "refused unless --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a registered model of the same name (built-in models never are)",
    )
    p.add_argument("--output", help="folder for the .pth + .yaml (default: a temporary folder)")
    p.add_argument("--val-data", help="dataset folder scored during training, instead of "
                   "holding out patches")  # fmt: skip
    preset = PRESETS[kind]
    fields = {f.name: f for f in setting_fields(TrainSettings)}
    for name in _FIELDS[kind]:
        f = fields[name]
        default = getattr(preset, name)
        text = tooltip(f, default)
        if f.type == "bool" or isinstance(default, bool):
            # An on/off setting: its flag switches away from the preset's value.
            p.add_argument(
                cli_flag(f),
                dest=name,
                action="store_false" if default else "store_true",
                help=text,
            )
            continue
        kind_of = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument(cli_flag(f), dest=name, type=kind_of, default=default, help=text)
    p.add_argument("--no-progress", action="store_true")


def _settings(args, kind: str):
    """The TrainSettings of a command line (checked: a bad value is one sentence)."""
    from dataclasses import replace

    from .core.train_settings import PRESETS

    return replace(PRESETS[kind], **{name: getattr(args, name) for name in _FIELDS[kind]})


def _add_finetune(sub, model_help: str) -> None:
    p = sub.add_parser(
        "finetune",
        help="finetune a model on a dataset of corrected patches",
        description="Train a TorchScript model in place on DATA (the whole network, the "
        "same recipe as the Finetune Model dock), save it and register it as NAME.",
    )
    p.add_argument("--model", default="default", help=model_help)
    p.add_argument(
        "--unfreeze",
        default="",
        help="train the heads and only these encoder stages, e.g. layer4 or layer3,layer4 "
        "(stem, layer1-4)",
    )
    p.add_argument(
        "--train-encoder",
        action="store_true",
        help="the whole network learns: the default now (kept for earlier scripts)",
    )
    _add_training_args(p, "finetune")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from scratch",
        description="Train one of the package's architectures from scratch on DATA, save it "
        "and register it as NAME.",
    )
    from .core.models import ARCHITECTURES, all_encoders

    p.add_argument(
        "--architecture",
        default="panoptic_lite",
        choices=list(ARCHITECTURES),
        help="; ".join(f"{a.name}: {a.summary}" for a in ARCHITECTURES.values()),
    )
    p.add_argument(
        "--encoder",
        choices=all_encoders(),
        help="ResNet layout of the encoder (default per architecture: "
        + ", ".join(f"{a.name} {a.default_encoder}" for a in ARCHITECTURES.values())
        + ")",
    )
    p.add_argument(
        "--pretrained",
        help="encoder weights: 'cem1.5m', a checkpoint file or an https URL (read as tensors "
        "only: files that need arbitrary unpickling are refused)",
    )
    _add_training_args(p, "train")


def _training_inputs(args, settings):
    """The dataset, checked in words first (no masks, unpaired names, float masks...)."""
    from .core.training import load_training_data

    data = load_training_data(
        args.data,
        val_folders=args.val_data,
        val_fraction=settings.val_fraction,
        patch_size=settings.patch_size,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    print(data.describe(), file=sys.stderr)
    return data.dataset, data.val


def _train_progress(total: int, disable: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="train", unit="it", file=sys.stderr, disable=disable)

    said = []

    def update(it: int, _total: int, record: dict) -> None:
        if "stage" in record:  # after the loop
            bar.set_description(record["stage"])
            return
        bar.set_postfix(loss=f"{record['total']:.4f}", refresh=False)
        bar.update(it - bar.n)
        if not said and it >= WARM_UP and record.get("eta_s") is not None:
            said.append(it)  # once: how long it will take, measured here (Ctrl+C stops)
            bar.write(run_time_line(it, total, float(record["eta_s"])), file=sys.stderr)

    return bar, update


def _report_training(result) -> None:
    last = result.history[-1] if result.history else {}
    print(
        json.dumps(
            {
                "name": result.name,
                "model": str(result.model_path),
                "config": str(result.config_path),
                "minutes": round(result.seconds / 60, 2),
                "iterations": result.iterations,
                "final_loss": last.get("total"),
                "validation": result.validation,
                "inference_settings": result.config.get("inference_settings"),
            },
            indent=2,
        )
    )


def run_finetune(args) -> int:
    """``empanada-napari finetune``: finetune, save, register, print the result as JSON."""
    from .core.training import finetune

    settings = _settings(args, "finetune")
    if args.unfreeze:
        from dataclasses import replace

        settings = replace(settings, freeze_encoder=True, unfreeze=args.unfreeze)
    return _fit(args, finetune, args.model, settings)


def run_train(args) -> int:
    """``empanada-napari train``: train from scratch, save, register, print JSON."""
    from .core.training import train

    settings = _settings(args, "train")
    return _fit(
        args, train, args.architecture, settings, encoder=args.encoder, pretrained=args.pretrained
    )


def _fit(args, fit, what: str, settings, **options) -> int:
    """Run ``fit(what, dataset, ...)`` (finetune or train) with ``settings``, a progress bar
    that says how long the run will take once its first steps are measured, and the JSON
    summary. The name (registered already: refused unless --overwrite), output folder and
    patch memory are checked before the dataset is read (the same checks as the Python
    API's)."""
    from .core.training.loops import check_request

    check_request(
        args.name,
        args.output,
        settings.patch_size,
        settings.batch_size,
        overwrite=args.overwrite,
        field="--name",
        replace_hint="add --overwrite",
    )
    dataset, val = _training_inputs(args, settings)
    bar, update = _train_progress(settings.iterations, args.no_progress)
    try:
        result = fit(
            what,
            dataset,
            name=args.name,
            output_dir=args.output,
            overwrite=args.overwrite,
            val=val,
            settings=settings,
            progress=update,
            **options,
        )
    finally:
        bar.close()
    _report_training(result)
    return 0
