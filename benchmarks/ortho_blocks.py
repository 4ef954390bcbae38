"""Ortho-plane in blocks against one block: what the block edges cost (issue 19).

    python -m benchmarks.ortho_blocks --data ../shared/data/lucchi_train --z 0,96 \\
        --crop 384 --chunks 96,192,192 --halos 16,32,64 [--json out.json]
    python -m benchmarks.ortho_blocks --z 0,96 --crop 384,1024 --memory-gb 2

Segments a crop of a labelled volume in ortho-plane mode once as one block (the reference)
and then in blocks with each halo, and scores the blocked labels against the one-block labels
(``evaluate``: recall and precision at IoU 0.5 / 0.75, semantic IoU) with the wall time of
each. With ``--memory-gb``, the blocks compared are the two default rules for a volume too
big for one block on a machine with that much RAM: the largest blocks that memory allows
(``memory_chunks``) and the fixed 160^3 blocks (a cluster's default), both with the default
halo; each row also counts the blocks and the padded voxels the network sees (``work``, as a
multiple of the volume). A crop of fewer than about 64 slices gives the xz/yz views thin
strips and ortho-plane little to vote with (docs/inference.md), so the default crop is 96
slices deep.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from benchmarks._common import write_result

KEYS = ("recall@0.5", "recall@0.75", "precision@0.75", "semantic_iou")


def run(volume, chunks: tuple[int, int, int], halos: list[int], model: str = "default") -> dict:
    """One-block reference, then per halo: objects, wall seconds and the scores of KEYS."""
    return run_blocks(volume, {f"halo {h}": (chunks, (h,) * 3) for h in halos}, model)


def run_blocks(volume, rows: dict, model: str = "default") -> dict:
    """One-block reference, then per row ``name: (chunks, halo)``: blocks, work, objects,
    wall seconds and the scores of KEYS against the reference."""
    from empanada_napari.core.inference.blocks.plan import grid_alignment, plan_blocks
    from empanada_napari.core.inference.chunked import segment_volume
    from empanada_napari.core.metrics import evaluate

    t0 = time.perf_counter()
    one = segment_volume(volume, model, mode="ortho")
    out: dict = {"one_block": {"objects": int(one.max()), "s": time.perf_counter() - t0}}
    for name, (chunks, halo) in rows.items():
        plan = plan_blocks(volume.shape, chunks, halo, grid_alignment("ortho", "xy"))
        padded = sum(math.prod(s.stop - s.start for s in b.padded) for b in plan)
        t0 = time.perf_counter()
        blocks = segment_volume(volume, model, mode="ortho", chunks=chunks, halo=halo)
        wall = time.perf_counter() - t0
        scores = evaluate(blocks, one)
        out[name] = {
            "chunks": list(chunks),
            "blocks": len(plan),
            "work": padded / math.prod(volume.shape),
            "objects": int(blocks.max()),
            "s": wall,
        } | {k: float(scores[k]) for k in KEYS}
    return out


def memory_rows(shape: tuple[int, int, int], memory_gb: float) -> dict:
    """The two default block rules for ``shape`` on a machine with ``memory_gb`` of RAM."""
    from empanada_napari.core.inference.blocks.plan import (
        ORTHO_BLOCK,
        default_chunks,
        default_halo,
    )

    halo = default_halo("ortho")
    chosen = default_chunks(shape, "ortho", memory=int(memory_gb * 2**30))
    if chosen in (tuple(shape), ORTHO_BLOCK):
        raise SystemExit(f"{memory_gb} GB gives no memory-chosen blocks for {shape}")
    return {f"memory {memory_gb:g} GB": (chosen, halo), "fixed 160^3": (ORTHO_BLOCK, halo)}


def main(argv: list[str] | None = None) -> int:
    import tifffile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/lucchi_train", help="folder with raw.tif")
    p.add_argument("--z", default="0,96", help="slices start,stop")
    p.add_argument("--crop", default="384", help="y,x size of the crop (one number: square)")
    p.add_argument("--chunks", default="96,192,192")
    p.add_argument("--halos", default="16,32,64")
    p.add_argument("--memory-gb", type=float, help="compare the default block rules instead")
    p.add_argument("--model", default="default")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    z0, z1 = (int(v) for v in args.z.split(","))
    raw = tifffile.imread(Path(args.data) / "raw.tif", key=range(z0, z1))
    cy, cx = (int(v) for v in (args.crop.split(",") * 2)[:2])
    raw = raw[:, :cy, :cx]
    chunks = tuple(int(v) for v in args.chunks.split(","))
    if args.memory_gb:
        result = run_blocks(raw, memory_rows(raw.shape, args.memory_gb), args.model)
    else:
        result = run(raw, chunks, [int(v) for v in args.halos.split(",")], args.model)
    result["meta"] = {"shape": list(raw.shape), "chunks": list(chunks), "z": [z0, z1]}
    result["meta"]["memory_gb"] = args.memory_gb
    for name, row in result.items():
        if name != "meta":
            print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    if args.json:
        write_result(args.json, "ortho_blocks", argv if argv is not None else sys.argv[1:], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
