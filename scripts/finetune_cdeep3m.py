"""Finetuning experiment: does finetuning on a few corrected patches transfer a model?

    python scripts/finetune_cdeep3m.py --model default --patches 32 --iterations 300

Cuts ``--patches`` 256 x 256 patches (each with some mitochondria, as a user would pick
them) from the CDeep3M SBEM *training* volume, with 2D connected components of the expert
binary mask as the corrected labels, writes them as a dataset folder in the original
plugin's format, finetunes the model on it (encoder frozen unless ``--unfreeze``), and
scores the model before and after on the separate *validation* volume, slice by slice (true
instances = 2D connected components of its binary mask; the volume is 40 nm in z).
Writes ``summary.json`` with the scores, patch count, iterations, wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdeep3m_sbem"


def pick_patches(raw, binary, n, size, seed, min_fg=0.03):
    """``n`` patches with at least ``min_fg`` foreground, spread over the slices."""
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    images, masks = [], []
    tries = 0
    while len(images) < n and tries < 100 * n:
        tries += 1
        z = int(rng.integers(raw.shape[0]))
        y = int(rng.integers(raw.shape[1] - size + 1))
        x = int(rng.integers(raw.shape[2] - size + 1))
        m = binary[z, y : y + size, x : x + size]
        if m.mean() < min_fg:
            continue
        images.append(np.ascontiguousarray(raw[z, y : y + size, x : x + size]))
        masks.append(label(m > 0, connectivity=1).astype(np.int32))
    return images, masks


def score(model, val_raw, val_bin, device, **engine):
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.metrics import evaluate

    pred = Engine2D(model, device, **engine).segment_slices(val_raw)
    s = evaluate(
        pred.astype(np.int64), (val_bin > 0).astype(np.int64), per_slice=True, relabel_2d_cc=True
    )
    return {
        k: s[k]
        for k in ("f1@0.5", "f1@0.5_mean", "f1@0.75", "pq", "semantic_iou", "n_pred", "n_gt")
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--output", type=Path, default=Path("runs/cdeep3m"))
    p.add_argument("--name", default="Lucchi_Lite_v1_CDeep3M")
    p.add_argument("--patches", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--unfreeze", default="", help="encoder stages to train (e.g. layer4)")
    p.add_argument("--train-encoder", action="store_true", help="train the whole encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    import tifffile

    from empanada_napari.core.training import PatchDataset, finetune, write_dataset

    raw = tifffile.imread(args.data / "training_raw.tif")
    binary = tifffile.imread(args.data / "training_mito_binary.tif")
    val_raw = tifffile.imread(args.data / "validation_raw.tif")
    val_bin = tifffile.imread(args.data / "validation_mito_binary.tif")
    images, masks = pick_patches(raw, binary, args.patches, args.patch_size, args.seed)
    ds_root = args.output / "dataset"
    write_dataset(ds_root, images, masks, source="cdeep3m_train", overwrite=True)

    before = score(args.model, val_raw, val_bin, args.device)
    print("before", json.dumps(before), flush=True)
    dataset = PatchDataset(
        ds_root,
        patch_size=args.patch_size,
        seed=args.seed,
        samples_per_epoch=max(len(images), args.batch_size * 4),
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = finetune(
        args.model,
        dataset,
        name=args.name,
        output_dir=args.output,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        unfreeze=args.unfreeze,
        freeze_encoder=not args.train_encoder,
        progress=lambda it, n, r: (
            print(f"it {it}/{n} loss {r['total']:.4f}", flush=True) if it % 25 == 0 else None
        ),
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = score(result.model_path, val_raw, val_bin, args.device)
    summary = {
        "model": args.model,
        "finetuned": str(result.model_path),
        "patches": len(images),
        "patch_size": args.patch_size,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "unfreeze": args.unfreeze,
        "train_encoder": args.train_encoder,
        "wall_minutes": wall / 60,
        "cpu_minutes": cpu / 60,
        "before": before,
        "after": after,
        "f1_gain": after["f1@0.5"] - before["f1@0.5"],
    }
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
