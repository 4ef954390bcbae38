"""Where a finetuning iteration spends its time: data, forward, loss, backward, optimizer.

    python -m benchmarks.finetune_speed --mode script --iterations 6
    python -m benchmarks.finetune_speed --mode noopt     # torch.jit.optimized_execution(False)
    python -m benchmarks.finetune_speed --mode eager     # the nn.Module with the same weights

Runs iterations of the bundled model on CDeep3M training patches (``--data``; the crop in
tests/data otherwise) the way the training loop does, and prints the CPU seconds
(``time.process_time``, every thread of the process) of each phase per iteration, so the
figures mean something on a loaded machine too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "forward", "loss", "backward", "optimizer")


def patches(data: Path | None, n: int, size: int) -> tuple[list, list]:
    """``n`` patches with mitochondria and their 2D connected components."""
    import tifffile
    from skimage.measure import label

    if data is None:
        raw = tifffile.imread(ROOT / "tests/data/cdeep3m_val_crop_raw.tif")
        gt = tifffile.imread(ROOT / "tests/data/cdeep3m_val_crop_mito_binary.tif")
    else:
        raw = tifffile.imread(data / "training_raw.tif", key=range(4))
        gt = tifffile.imread(data / "training_mito_binary.tif", key=range(4))
    rng = np.random.default_rng(0)
    images, masks = [], []
    size = min(size, raw.shape[1], raw.shape[2])
    while len(images) < n:
        z = int(rng.integers(raw.shape[0]))
        y, x = (int(rng.integers(s - size + 1)) for s in raw.shape[1:])
        m = gt[z, y : y + size, x : x + size]
        if m.mean() > 0.03:
            images.append(raw[z, y : y + size, x : x + size])
            masks.append(label(m > 0).astype(np.int32))
    return images, masks


def main(argv: list[str] | None = None) -> int:
    import torch

    from empanada_napari.core.models.loading import load_torchscript, resolve_model
    from empanada_napari.core.training import PatchDataset
    from empanada_napari.core.training.loss import PanopticLoss
    from empanada_napari.core.training.runner import _param_groups, set_trainable

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["script", "noopt", "eager"], default="script")
    p.add_argument("--data", type=Path, help="the cdeep3m_sbem folder")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--train-encoder", action="store_true")
    args = p.parse_args(argv)

    images, masks = patches(args.data, 16, args.patch_size)
    ds = PatchDataset(images, masks, patch_size=args.patch_size, samples_per_epoch=64)
    name, path, config = resolve_model("default")
    module = load_torchscript(path, torch.device("cpu"))
    if args.mode == "eager":
        from empanada_napari.core.models.architectures import build_model

        eager = build_model(
            config["architecture"], encoder=config["encoder"], **config["architecture_params"]
        )
        eager.load_state_dict(module.state_dict())
        module = eager
    frozen = set_trainable(module, not args.train_encoder, ())
    optimizer = torch.optim.AdamW(_param_groups(module, 0.1), lr=1e-3)
    criterion = PanopticLoss()
    module.train()
    for m in frozen:
        m.eval()
    mode = (
        torch.jit.optimized_execution(False) if args.mode == "noopt" else contextlib.nullcontext()
    )
    bs = args.batch_size
    rows = []
    with mode:
        for it in range(args.iterations):
            marks = [time.process_time()]
            items = [ds[(it * bs + i) % len(ds)] for i in range(bs)]
            x = torch.stack([a for a, _ in items])
            targets = {k: torch.stack([t[k] for _, t in items]) for k in items[0][1]}
            marks.append(time.process_time())
            out = module(x, 2, True)
            marks.append(time.process_time())
            loss = criterion(out, targets)["total"]
            marks.append(time.process_time())
            optimizer.zero_grad()
            loss.backward()
            marks.append(time.process_time())
            optimizer.step()
            marks.append(time.process_time())
            spans = zip(PHASES, marks[:-1], marks[1:], strict=True)
            row = {k: round(b - a, 3) for k, a, b in spans}
            row["total"] = round(marks[-1] - marks[0], 3)
            rows.append(row)
            print(args.mode, it + 1, json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
