"""``empanada-napari finetune | train``: models trained on a dataset folder, from the command line.

Both read a dataset in the format of docs/models.md (checked in words first), show a progress
bar with the loss, save the model (TorchScript + YAML), register it and print a JSON summary.
"""

from __future__ import annotations

import json
import sys


def add_training(sub, model_help: str) -> None:
    """The ``finetune`` and ``train`` sub-commands (``model_help``: the --model help text)."""
    _add_finetune(sub, model_help)
    _add_train(sub)


def _add_training_args(p) -> None:
    p.add_argument(
        "--data", required=True, help="dataset folder (<data>/<source>/images|masks/<name>.tiff)"
    )
    p.add_argument("--name", required=True, help="register the trained model under this name")
    p.add_argument("--output", help="folder for the .pth + .yaml (default: a temporary folder)")
    p.add_argument("--val-data", help="dataset folder scored every --val-every iterations")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="without --val-data: hold out this fraction of the patches for validation",
    )
    p.add_argument("--val-every", type=int, default=0)
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.003, help="peak one-cycle learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")


def _add_finetune(sub, model_help: str) -> None:
    p = sub.add_parser(
        "finetune",
        help="finetune a model on a dataset of corrected patches",
        description="Train a TorchScript model in place on DATA (encoder frozen by default), "
        "save it and register it as NAME.",
    )
    p.add_argument("--model", default="default", help=model_help)
    p.add_argument(
        "--unfreeze",
        default="",
        help="encoder stages to train, e.g. layer4 or layer3,layer4 (stem, layer1-4)",
    )
    p.add_argument("--train-encoder", action="store_true", help="train the whole encoder")
    p.add_argument(
        "--no-tune",
        dest="tune",
        action="store_false",
        help="keep the default post-processing settings (else those scoring best on the "
        "patches, 20 objects or more, are stored with the model)",
    )
    _add_training_args(p)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from scratch",
        description="Train one of the package's architectures from scratch on DATA, save it "
        "and register it as NAME.",
    )
    from .core.models.catalog import ARCHITECTURES, all_encoders

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
    _add_training_args(p)


def _training_inputs(args):
    """The dataset, checked in words first (no masks, unpaired names, float masks...)."""
    from .core.training import load_training_data

    data = load_training_data(
        args.data,
        val_folders=args.val_data,
        val_fraction=args.val_fraction,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(data.describe(), file=sys.stderr)
    return data.dataset, data.val


def _train_progress(total: int, disable: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="train", unit="it", file=sys.stderr, disable=disable)

    def update(it: int, _total: int, record: dict) -> None:
        if "stage" in record:  # after the loop
            bar.set_description(record["stage"])
            return
        bar.set_postfix(loss=f"{record['total']:.4f}", refresh=False)
        bar.update(it - bar.n)

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

    return _fit(
        args,
        finetune,
        args.model,
        freeze_encoder=not args.train_encoder,
        unfreeze=args.unfreeze,
        tune=args.tune,
    )


def run_train(args) -> int:
    """``empanada-napari train``: train from scratch, save, register, print JSON."""
    from .core.training import train

    return _fit(args, train, args.architecture, encoder=args.encoder, pretrained=args.pretrained)


def _check_request(args) -> None:
    """What can be refused before the dataset is read or a minute is trained: the name (it
    names files in --output, and the registry entry), the output folder, and patches that
    cannot fit in memory."""
    from pathlib import Path

    from .core.errors import InputError
    from .core.models.config import check_name
    from .core.training.dataset import check_patch_memory

    check_name(args.name)  # the registry's rule: no '/', no '..', no hidden names
    if args.output is not None and Path(args.output).exists() and not Path(args.output).is_dir():
        raise InputError(
            f"--output {args.output} is a file; give a folder for the model's .pth and .yaml."
        )
    check_patch_memory(args.patch_size, args.batch_size)


def _fit(args, fit, what: str, **options) -> int:
    """Run ``fit(what, dataset, ...)`` (finetune or train) with the common options, a
    progress bar, and the JSON summary."""
    _check_request(args)
    dataset, val = _training_inputs(args)
    bar, update = _train_progress(args.iterations, args.no_progress)
    try:
        result = fit(
            what,
            dataset,
            name=args.name,
            output_dir=args.output,
            val=val,
            iterations=args.iterations,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            val_every=args.val_every,
            progress=update,
            **options,
        )
    finally:
        bar.close()
    _report_training(result)
    return 0
