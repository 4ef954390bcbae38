"""Peak memory of the chunked 3D driver against volume size (issues 4 and 7).

Tiles the real Lucchi FIB-SEM volume into zarr volumes of growing size, segments each one in
a fresh process with :func:`~empanada_napari.core.inference.chunked.segment_volume` (zarr in,
zarr out) and reports that process's peak RSS, time and voxels/s. Memory should depend on the
block size only, so the RSS column should stay flat while the volume grows past the RAM.

    python -m benchmarks.memory --data ../shared/data/lucchi_train/raw.tif \\
        --sizes 256,512,1024 --big-gb 13 --downsample 8 --work runs/memory [--json out.json]

``--downsample 8`` runs the network on 8x smaller slices (results are rendered back to full
resolution, so post-processing, linking and writing still touch every voxel); it keeps the
13 GB run to minutes on a CPU. Memory does not depend on it much: the block is the same.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, shape_text, si, write_result


def tile_volume(source: np.ndarray, shape: tuple[int, int, int], path: Path, chunks) -> None:
    """Write ``source`` tiled (mirrored at every repeat, so no seams) to a zarr of ``shape``."""
    import zarr

    if path.exists():
        existing = zarr.open_array(str(path), mode="r")
        if tuple(existing.shape) == tuple(shape):
            return
    out = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=source.dtype)

    def mirrored(n: int, period: int) -> np.ndarray:
        i = np.arange(n) % (2 * period)
        return np.where(i < period, i, 2 * period - 1 - i)

    iy, ix = mirrored(shape[1], source.shape[1]), mirrored(shape[2], source.shape[2])
    iz = mirrored(shape[0], source.shape[0])
    for z0 in range(0, shape[0], chunks[0]):
        zs = iz[z0 : z0 + chunks[0]]
        out[z0 : z0 + len(zs)] = source[zs][:, iy][:, :, ix]


def run_one(args) -> dict:
    """Segment one zarr volume in this process; report peak RSS and time."""
    import zarr

    from empanada_napari.core.inference.chunked import segment_volume
    from empanada_napari.core.ngff import read_meta

    volume = zarr.open_array(args.one, mode="r")
    out = Path(args.one).with_suffix(".labels.zarr")
    blocks = [0]  # the block count, from the chunked driver's progress info

    def count_blocks(done: int, total: int, info: dict | None = None) -> None:
        if info:
            blocks[0] = info["blocks"]

    start = time.perf_counter()
    segment_volume(
        volume,
        args.model,
        mode=args.mode,
        out=out,
        overwrite=True,
        downsample=args.downsample,
        progress=count_blocks,
    )
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    voxels = int(np.prod(volume.shape))
    return {
        "shape": list(volume.shape),
        "voxels": voxels,
        "gigavoxels": round(voxels / 1e9, 3),
        "blocks": blocks[0],
        "objects": int(read_meta(out)["objects"]),
        "seconds": round(seconds, 1),
        "voxels_per_s": round(voxels / seconds),
        "peak_rss_gb": round(peak_kb / 1024**2, 2),
    }


def markdown(result: dict) -> str:
    """The docs/benchmarks.md table of a ``--json`` result: one row per volume."""
    header = [
        "volume",
        "voxels (G)",
        "blocks",
        "objects",
        "time (s)",
        "voxels/s",
        "peak RSS (GB)",
    ]
    rows = [
        [
            shape_text(r["shape"]),
            # 3 significant digits, not 3 decimals: a quick 64^3 run would read 0.000.
            f"{r.get('voxels', r['gigavoxels'] * 1e9) / 1e9:.3g}",
            r["blocks"],
            r["objects"],
            r["seconds"],
            si(r["voxels_per_s"]),
            f"{r['peak_rss_gb']:.2f}",
        ]
        for r in result["rows"]
    ]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    """Tile, segment each volume in a fresh process and print (and optionally save) the rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/lucchi_train/raw.tif")
    p.add_argument("--sizes", default="256,512,1024", help="cube sides to test")
    p.add_argument("--big-gb", type=float, default=0.0, help="also a Z x 2048 x 2048 volume")
    p.add_argument("--model", default="default")
    p.add_argument("--mode", default="stack", choices=["stack", "ortho"])
    p.add_argument("--downsample", type=int, default=8)
    p.add_argument("--work", default="runs/memory")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one volume here
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    import tifffile

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = tifffile.imread(args.data)
    shapes = [(int(s),) * 3 for s in args.sizes.split(",") if s]
    if args.big_gb:
        shapes.append((int(args.big_gb * 1e9 / 2048**2), 2048, 2048))
    rows = []
    for shape in shapes:
        path = work / f"raw_{'x'.join(map(str, shape))}.zarr"
        tile_volume(source, shape, path, chunks=(64, min(shape[1], 1024), min(shape[2], 1024)))
        cmd = [sys.executable, "-m", "benchmarks.memory", "--one", str(path), "--model",
               args.model, "--mode", args.mode, "--downsample", str(args.downsample)]  # fmt: skip
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| shape | GVox | blocks | objects | s | voxels/s | peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {'x'.join(map(str, r['shape']))} | {r['gigavoxels']} | {r['blocks']} | "
            f"{r['objects']} | {r['seconds']} | {r['voxels_per_s']:.3g} | {r['peak_rss_gb']} |"
        )
    if args.json:
        write_result(args.json, "memory", argv, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
