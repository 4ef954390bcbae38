"""Throughput of the 2D and stack pipelines against the model's forward passes alone.

    python -m benchmarks.throughput --model default --data ../shared/data/lucchi_train \\
        --sizes 16x512x512,32x768x1024 --batch-sizes 1,2,4 [--device cuda] [--json out.json]

For each volume size (a crop of the raw volume) and batch size it times:
- ``forward``: only the model calls on the same padded batches (the floor);
- ``2d``: the whole 2D pipeline (normalise, forward, post-process each slice);
- ``stack``: 3D stack inference (2D + median filter + linking + filters);
- ``postprocess``: panoptic post-processing alone, as pixels per second;
and reports voxels/s and the ratio pipeline / forward (1.0 = post-processing fully hidden).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchi_train"


def _forward_only(engine, volume, value_range) -> float:
    import torch

    bs = engine.default_batch_size()
    t0 = time.perf_counter()
    for start in range(0, volume.shape[0], bs):
        batch = engine.normalize(volume[start : start + bs], value_range)
        x = torch.from_numpy(batch)[:, None].to(engine.device)
        pad = engine.model.padding_factor
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % pad, 0, -h % pad))
        engine._forward(x, 2, engine.settings.fine_boundaries)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _postprocess_only(engine, volume, value_range) -> tuple[float, int]:
    raws = []
    bs = engine.default_batch_size()
    for start in range(0, volume.shape[0], bs):
        raws.append(engine.infer(engine.normalize(volume[start : start + bs], value_range)))
    t0 = time.perf_counter()
    pixels = 0
    for raw in raws:
        for i in range(raw.sem_prob.shape[0]):
            pixels += engine.postprocess(raw, i).size
    return time.perf_counter() - t0, pixels


def bench(model, volume, batch_size, device) -> dict:
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.stack import segment_stack_3d
    from empanada_napari.core.preprocess import intensity_range

    engine = Engine2D(model, device, batch_size=batch_size)
    value_range = intensity_range(volume)
    engine.segment_stack(volume[:batch_size])  # warm-up (allocations, batch detection)
    forward = _forward_only(engine, volume, value_range)
    t0 = time.perf_counter()
    engine.segment_stack(volume, value_range=value_range)
    two_d = time.perf_counter() - t0
    t0 = time.perf_counter()
    segment_stack_3d(volume, engine)
    stack = time.perf_counter() - t0
    post, pixels = _postprocess_only(engine, volume, value_range)
    voxels = volume.size
    return {
        "shape": list(volume.shape),
        "batch_size": engine.default_batch_size(),
        "forward_s": forward,
        "2d_s": two_d,
        "stack_s": stack,
        "2d_ratio": two_d / forward,
        "stack_ratio": stack / forward,
        "forward_voxels_per_s": voxels / forward,
        "2d_voxels_per_s": voxels / two_d,
        "stack_voxels_per_s": voxels / stack,
        "postprocess_pixels_per_s": pixels / post,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--sizes", default="16x512x512,32x768x1024")
    p.add_argument("--batch-sizes", default="1,2,4")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import tifffile
    import torch

    rows = []
    for size in args.sizes.split(","):
        z, y, x = (int(v) for v in size.split("x"))
        volume = tifffile.imread(args.data / "raw.tif", key=range(z))[:, :y, :x]
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            row = bench(args.model, volume, bs, args.device)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "model": args.model,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
