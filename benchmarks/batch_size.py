"""Time per pixel of one model call by slice shape and batch size (how the CPU default is set).

    python -m benchmarks.batch_size --shapes 768x1024,165x1024,256x256 --batch-sizes 1,2,4,8
        [--model default] [--device cpu] [--rounds 5] [--json out.json]

``Engine2D.infer`` (padding, channels-last, output conversion included) on random slices,
warm; every shape and batch size once per round, interleaved, so drift hits all alike;
medians over the rounds in ns per pixel of the slice. ``Engine2D.default_batch_size`` is
printed beside each shape. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, write_result


def _shape(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="768x1024,165x1024,165x768,512x512,256x256")
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--model", default="default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)

    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.memory import reuse_freed_memory

    engine = Engine2D(args.model, args.device)
    shapes = [_shape(s) for s in args.shapes.split(",")]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    times: dict[tuple, list[float]] = {}
    with reuse_freed_memory():  # as during a segmentation job
        for r in range(args.rounds):
            for shape in shapes:
                for bs in sizes:
                    x = rng.random((bs, *shape), dtype=np.float32)
                    if r == 0:
                        engine.infer(x)  # warm-up of this shape
                    start = time.perf_counter()
                    engine.infer(x)
                    seconds = time.perf_counter() - start
                    times.setdefault((shape, bs), []).append(seconds / (bs * shape[0] * shape[1]))
    header = ["slice", "default batch"] + [f"batch {bs} (ns/px)" for bs in sizes]
    rows = [
        [f"{h} x {w}", engine.default_batch_size((h, w))]
        + [round(float(np.median(times[((h, w), bs)])) * 1e9, 1) for bs in sizes]
        for h, w in shapes
    ]
    print(markdown_table(header, rows))
    if args.json:
        result = {"meta": {"device": str(engine.device), "rounds": args.rounds}}
        result["rows"] = [dict(zip(header, row, strict=True)) for row in rows]
        write_result(Path(args.json), "batch_size", argv, result)


if __name__ == "__main__":
    main()
