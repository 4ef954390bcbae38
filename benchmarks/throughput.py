"""Throughput of the 2D and stack pipelines against the model's forward passes alone.

    python -m benchmarks.throughput --model default --data ../shared/data/lucchi_train \\
        --sizes 16x512x512,32x768x1024 --batch-sizes 1,2,4 [--repeats 3] [--device cuda] \\
        [--raw volume.tif] [--json out.json]

For each volume size (a crop of the raw volume) and batch size it times:
- ``forward``: only the model calls on the same padded batches (the floor);
- ``2d``: the whole 2D pipeline (normalise, forward, post-process each slice);
- ``stack``: 3D stack inference (2D + median filter + linking + filters);
- ``postprocess``: panoptic post-processing alone, as pixels per second;
and reports voxels/s and the ratio pipeline / forward (1.0 = post-processing fully hidden).
With ``--ortho-sizes`` it also times ortho-plane consensus on those crops (cubes suit it)
against the forward passes over the slices of all three views.
Each is the median of ``--repeats`` runs after a warm-up: single runs on shared cores are noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks._common import markdown_table, si, time_call, write_result

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchi_train"


def _forward_pass(engine, volume, value_range) -> None:
    """The model calls alone on the pipeline's padded batches (the floor), under the same
    allocator settings as the pipeline (core/memory.py)."""
    import torch

    from empanada_napari.core.memory import reuse_freed_memory

    bs = engine.default_batch_size(volume.shape[1:])
    with reuse_freed_memory():
        for start in range(0, volume.shape[0], bs):
            batch = engine.normalize(volume[start : start + bs], value_range)
            x = torch.from_numpy(batch)[:, None].to(engine.device)
            pad = engine.model.padding_factor
            h, w = x.shape[-2:]
            x = torch.nn.functional.pad(x, (0, -w % pad, 0, -h % pad))
            engine._forward(x, 2, engine.settings.fine_boundaries)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()


def bench(model, volume, batch_size, device, repeats: int = 3) -> dict:
    """Median times (``repeats`` runs after a warm-up) of forward / 2D / stack on ``volume``."""
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.stack import segment_stack_3d
    from empanada_napari.core.preprocess import intensity_range

    engine = Engine2D(model, device, batch_size=batch_size)
    value_range = intensity_range(volume)
    forward = time_call(lambda: _forward_pass(engine, volume, value_range), repeats)
    two_d = time_call(lambda: engine.segment_slices(volume, value_range=value_range), repeats)
    stack = time_call(lambda: segment_stack_3d(volume, engine), repeats)
    bs = engine.default_batch_size(volume.shape[1:])
    raws = [
        engine.infer(engine.normalize(volume[start : start + bs], value_range))
        for start in range(0, volume.shape[0], bs)
    ]
    pixels = []

    def postprocess_all() -> None:
        sizes = (
            engine.postprocess(raw, i).size for raw in raws for i in range(raw.sem_prob.shape[0])
        )
        pixels.append(sum(sizes))

    post = time_call(postprocess_all, repeats)
    voxels = volume.size
    return {
        "shape": list(volume.shape),
        "batch_size": bs,
        "repeats": repeats,
        "forward_s": forward,
        "2d_s": two_d,
        "stack_s": stack,
        "2d_ratio": two_d / forward,
        "stack_ratio": stack / forward,
        "forward_voxels_per_s": voxels / forward,
        "2d_voxels_per_s": voxels / two_d,
        "stack_voxels_per_s": voxels / stack,
        "postprocess_pixels_per_s": pixels[-1] / post,
    }


def bench_ortho(model, volume, device, repeats: int = 3) -> dict:
    """Median times of ortho-plane consensus and of the forward passes over its 3 views."""
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.ortho import segment_ortho
    from empanada_napari.core.inference.stack import AXES
    from empanada_napari.core.preprocess import intensity_range

    engine = Engine2D(model, device)
    value_range = intensity_range(volume)
    views = [volume.transpose(AXES[axis]) for axis in ("xy", "xz", "yz")]

    def forward_all() -> None:
        for view in views:
            _forward_pass(engine, view, value_range)

    forward = time_call(forward_all, repeats)
    ortho = time_call(lambda: segment_ortho(volume, engine), repeats)
    return {
        "shape": list(volume.shape),
        "batch_size": engine.default_batch_size(volume.shape[1:]),
        "repeats": repeats,
        "forward_3_views_s": forward,
        "ortho_s": ortho,
        "ortho_ratio": ortho / forward,
        "ortho_voxels_per_s": volume.size / ortho,
    }


def markdown(result: dict) -> str:
    """The docs/benchmarks.md table of a ``--json`` result: one row per volume and batch."""
    header = [
        "volume",
        "batch",
        "forward voxels/s",
        "2D pipeline ratio",
        "stack ratio",
        "post-processing alone (px/s)",
    ]
    rows = [
        [
            " x ".join(map(str, r["shape"])),
            r["batch_size"],
            si(r["forward_voxels_per_s"]),
            f"{r['2d_ratio']:.2f}",
            f"{r['stack_ratio']:.2f}",
            si(r["postprocess_pixels_per_s"]),
        ]
        for r in result["rows"]
    ]
    table = markdown_table(header, rows)
    if result.get("ortho_rows"):
        ortho = [
            [
                " x ".join(map(str, r["shape"])),
                r["batch_size"],
                si(r["ortho_voxels_per_s"]),
                f"{r['ortho_ratio']:.2f}",
            ]
            for r in result["ortho_rows"]
        ]
        header = ["volume", "batch", "ortho-plane voxels/s", "ortho / forward over 3 views"]
        table += "\n\n" + markdown_table(header, ortho)
    return table


def main(argv: list[str] | None = None) -> int:
    """Benchmark each crop size and batch size; print one JSON row each."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding raw.tif")
    p.add_argument("--raw", type=Path, help="a raw tif to crop from instead of --data/raw.tif")
    p.add_argument("--sizes", default="16x512x512,32x768x1024")
    p.add_argument("--batch-sizes", default="1,2,4")
    p.add_argument("--ortho-sizes", default="", help="crops for ortho-plane, e.g. 64x256x256")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measure (median)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import tifffile

    raw = args.raw or args.data / "raw.tif"
    rows = []
    for size in args.sizes.split(","):
        z, y, x = (int(v) for v in size.split("x"))
        volume = tifffile.imread(raw, key=range(z))[:, :y, :x]
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            row = bench(args.model, volume, bs, args.device, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    ortho_rows = []
    for size in filter(None, args.ortho_sizes.split(",")):
        z, y, x = (int(v) for v in size.split("x"))
        volume = tifffile.imread(raw, key=range(z))[:, :y, :x]
        row = bench_ortho(args.model, volume, args.device, args.repeats)
        ortho_rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        meta = {"model": args.model, "device": args.device, "raw": str(raw)}
        result = {"meta": meta, "rows": rows, "ortho_rows": ortho_rows}
        write_result(args.json, "throughput", argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
