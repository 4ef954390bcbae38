"""Stack-mode time with this release's 3D rules against earlier releases' (issue 17).

    python -m benchmarks.linking --data ../shared/data/lucchi_train [--z 0,165] \\
        [--repeats 3] [--json out.json]

Times the whole stack pipeline (``segment_stack_3d``, the MitoNet authors' Lucchi settings)
with ``linking="separate", border_aware=True`` (the defaults) and ``linking="legacy",
border_aware=False`` (earlier releases), interleaved run by run after one warm-up of each so
that both share the machine's load, and reports the medians and their ratio. It also times
the linking and filtering stage alone (``SliceLinker``) on the pipeline's own 2D labels,
where the two differ. Warm figures (model loaded and warmed in this process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks._common import write_result

RULES = {
    "separate": {"linking": "separate", "border_aware": True},
    "legacy": {"linking": "legacy", "border_aware": False},
}
LUCCHI = {"median_slices": 7, "min_size": 5000, "min_extent": 8}


def run(volume, model: str = "Lucchi_Lite_v1", repeats: int = 3, device: str = "cpu") -> dict:
    """Median seconds per rule set (whole pipeline and linking alone) and the ratios."""
    import numpy as np

    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.stack import SliceLinker, segment_stack_3d

    engine = Engine2D(model, device)
    seen: list = []
    add = SliceLinker.add

    def record(self, labels):
        seen.append(np.array(labels))
        return add(self, labels)

    SliceLinker.add = record  # the pipeline's 2D labels, once
    try:
        segment_stack_3d(volume, engine, **LUCCHI)  # also the warm-up
    finally:
        SliceLinker.add = add
    slices = np.stack(seen)
    pipeline: dict[str, list[float]] = {name: [] for name in RULES}
    linking: dict[str, list[float]] = {name: [] for name in RULES}
    for rules in RULES.values():  # warm-up of each
        segment_stack_3d(volume, engine, **LUCCHI, **rules)
    for _ in range(repeats):
        for name, rules in RULES.items():
            t0 = time.perf_counter()
            segment_stack_3d(volume, engine, **LUCCHI, **rules)
            pipeline[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            linker = SliceLinker(slices.shape, linking=rules["linking"])
            for plane in slices:
                linker.add(plane)
            linker.finish(LUCCHI["min_size"], LUCCHI["min_extent"], rules["border_aware"])
            linking[name].append(time.perf_counter() - t0)
    out: dict = {"shape": list(volume.shape), "settings": LUCCHI, "repeats": repeats}
    for name in RULES:
        out[name] = {
            "pipeline_s": statistics.median(pipeline[name]),
            "linking_s": statistics.median(linking[name]),
        }
    out["ratio_pipeline"] = out["separate"]["pipeline_s"] / out["legacy"]["pipeline_s"]
    out["ratio_linking"] = out["separate"]["linking_s"] / out["legacy"]["linking_s"]
    return out


def main(argv: list[str] | None = None) -> int:
    """Time both rule sets on a volume; print the figures, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="folder holding raw.tif")
    p.add_argument("--raw", type=Path, help="a raw tif instead of --data/raw.tif")
    p.add_argument("--z", help="slice range start,stop")
    p.add_argument("--model", default="Lucchi_Lite_v1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import tifffile

    raw = args.raw or (args.data / "raw.tif" if args.data else None)
    if raw is None:
        p.error("give --data or --raw")
    key = range(*(int(v) for v in args.z.split(","))) if args.z else None
    volume = tifffile.imread(raw, key=key)
    result = run(volume, args.model, args.repeats, args.device)
    for name in RULES:
        r = result[name]
        print(f"{name:9s} pipeline {r['pipeline_s']:.1f} s, linking {r['linking_s']:.2f} s")
    print(
        f"separate / legacy: pipeline {result['ratio_pipeline']:.3f}, "
        f"linking {result['ratio_linking']:.3f}"
    )
    if args.json:
        write_result(args.json, "linking", argv, result | {"meta": {"raw": str(raw)}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
