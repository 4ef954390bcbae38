"""Ortho-plane in blocks against one block: what the block edges cost (issue 19).

    python -m benchmarks.ortho_blocks --data ../shared/data/lucchi_train --z 0,96 \\
        --crop 384 --chunks 96,192,192 --halos 16,32,64 [--json out.json]

Segments a crop of a labelled volume in ortho-plane mode once as one block (the reference)
and then in blocks with each halo, and scores the blocked labels against the one-block labels
(``evaluate``: recall and precision at IoU 0.5 / 0.75, semantic IoU) with the wall time of
each. A crop of fewer than about 64 slices gives the xz/yz views thin strips and ortho-plane
little to vote with (docs/inference.md), so the default crop is 96 slices deep.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks._common import write_result

KEYS = ("recall@0.5", "recall@0.75", "precision@0.75", "semantic_iou")


def run(volume, chunks: tuple[int, int, int], halos: list[int], model: str = "default") -> dict:
    """One-block reference, then per halo: objects, wall seconds and the scores of KEYS."""
    from empanada_napari.core.inference.chunked import segment_volume
    from empanada_napari.core.metrics import evaluate

    t0 = time.perf_counter()
    one = segment_volume(volume, model, mode="ortho")
    out: dict = {"one_block": {"objects": int(one.max()), "s": time.perf_counter() - t0}}
    for halo in halos:
        t0 = time.perf_counter()
        blocks = segment_volume(volume, model, mode="ortho", chunks=chunks, halo=(halo,) * 3)
        wall = time.perf_counter() - t0
        scores = evaluate(blocks, one)
        out[f"halo {halo}"] = {"objects": int(blocks.max()), "s": wall} | {
            k: float(scores[k]) for k in KEYS
        }
    return out


def main(argv: list[str] | None = None) -> int:
    import tifffile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/lucchi_train", help="folder with raw.tif")
    p.add_argument("--z", default="0,96", help="slices start,stop")
    p.add_argument("--crop", type=int, default=384, help="y and x size of the crop")
    p.add_argument("--chunks", default="96,192,192")
    p.add_argument("--halos", default="16,32,64")
    p.add_argument("--model", default="default")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    z0, z1 = (int(v) for v in args.z.split(","))
    raw = tifffile.imread(Path(args.data) / "raw.tif", key=range(z0, z1))
    raw = raw[:, : args.crop, : args.crop]
    chunks = tuple(int(v) for v in args.chunks.split(","))
    result = run(raw, chunks, [int(v) for v in args.halos.split(",")], args.model)
    result["meta"] = {"shape": list(raw.shape), "chunks": list(chunks), "z": [z0, z1]}
    for name, row in result.items():
        if name != "meta":
            print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    if args.json:
        write_result(args.json, "ortho_blocks", argv if argv is not None else sys.argv[1:], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
