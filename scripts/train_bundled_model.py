"""Reproduce the bundled offline model: ``python scripts/train_bundled_model.py``.

Trains the package's compact ``panoptic_lite`` architecture from scratch on the EPFL Lucchi
training volume (``../shared/data/lucchi_train``), holding out the slab z >= 132 for
validation, and writes TorchScript + YAML to ``--output`` (default ``runs/bundled``). Copy
the two files into ``src/empanada_napari/data/`` to ship them (see docs/models.md).

Every setting that shapes the model is a flag with the value used for the shipped model as
its default, so running the script unchanged reproduces it (up to CPU thread scheduling).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchi_train"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--output", type=Path, default=Path("runs/bundled"))
    p.add_argument("--name", default="Lucchi_Lite_v1")
    p.add_argument("--train-z", default="0,128", help="training slices start,stop")
    p.add_argument("--val-z", default="132,165", help="held-out slices start,stop")
    p.add_argument("--iterations", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=320)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--decoder-channels", type=int, default=64)
    p.add_argument("--foreground-fraction", type=float, default=0.67)
    p.add_argument("--scale-min", type=float, default=0.6, help="smallest zoom augmentation")
    p.add_argument("--scale-max", type=float, default=1.25, help="largest zoom augmentation")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-slices", type=int, default=4, help="held-out slices scored per check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--init",
        type=Path,
        help="continue from this TorchScript model (stage 2): every layer trains, one new "
        "one-cycle schedule to --lr",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = p.parse_args(argv)

    import torch

    from empanada_napari.core.training import PatchDataset, load_volume_slices, train

    if args.threads:
        torch.set_num_threads(args.threads)
    tz = tuple(int(v) for v in args.train_z.split(","))
    vz = tuple(int(v) for v in args.val_z.split(","))
    raw = args.data / "raw.tif"
    labels = args.data / "mito_instances_per_slice_2d.tif"
    images, masks = load_volume_slices(raw, labels, z_range=tz)
    val_images, val_masks = load_volume_slices(raw, labels, z_range=vz)
    pick = np.linspace(0, len(val_images) - 1, args.val_slices).round().astype(int)
    val = ([val_images[i] for i in pick], [val_masks[i] for i in pick])
    dataset = PatchDataset(
        images,
        masks,
        patch_size=args.patch_size,
        foreground_fraction=args.foreground_fraction,
        augment={"scale": (args.scale_min, args.scale_max)},
        samples_per_epoch=args.batch_size * 50,
        seed=args.seed,
    )
    args.output.mkdir(parents=True, exist_ok=True)
    log = open(args.output / "train_log.jsonl", "w")
    start = time.time()

    def progress(it: int, total: int, record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()
        if it % 10 == 0 or it == total or any(k.startswith("val_") for k in record):
            elapsed = time.time() - start
            extra = {k: round(v, 4) for k, v in record.items() if k.startswith("val_")}
            print(
                f"it {it}/{total} loss {record['total']:.4f} (ce {record['ce']:.3f} "
                f"mse {record['mse']:.5f} l1 {record['l1']:.2f}) lr {record['lr']:.5f} "
                f"{elapsed / 60:.1f} min {extra}",
                flush=True,
            )

    description = (
        "Compact offline model bundled with empanada-napari, trained on the EPFL Lucchi "
        "FIB-SEM training volume (mouse hippocampus, ~5 nm voxels), slices "
        f"{tz[0]}-{tz[1] - 1}. Not MitoNet: a small CPU-friendly model for the offline "
        "quick start and as a starting point for finetuning."
    )
    common = dict(
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        val_every=args.val_every,
        device=args.device,
        output_dir=args.output,
        register=False,
        val=val,
        progress=progress,
    )
    if args.init is None:
        result = train(
            "panoptic_lite",
            dataset,
            name=args.name,
            encoder="resnet18",
            arch_kwargs={"width": args.width, "decoder_channels": args.decoder_channels},
            description=description,
            **common,
        )
    else:
        from empanada_napari.core.training import finetune

        result = finetune(args.init, dataset, name=args.name, freeze_encoder=False, **common)
    summary = {
        "name": result.name,
        "model": str(result.model_path),
        "minutes": result.seconds / 60,
        "iterations": result.iterations,
        "validation": result.validation,
        "settings": vars(args) | {"data": str(args.data), "output": str(args.output)},
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
