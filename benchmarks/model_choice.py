"""Which model fits a microscope, without ground truth: the flip-agreement estimate against
the true F1 on every instrument with ground truth, and the model ``auto`` picks.

    python -m benchmarks.model_choice --json runs/bench/model_choice.json
    python -m benchmarks.model_choice --models Lucchi_Lite_v1,EM_Lite_v2,path/to/mine.yaml

Held-out parts only (no bundled model trained on them): the Lucchi slab (z 132-164),
CDeep3M validation, fafb sections 6-7. For each model: the estimate
(:func:`empanada_napari.core.quality.estimate_quality`, timed) and the 2D F1@0.5 per slice
at its own settings (true instances: the per-slice instances where the data has them, else
2D connected components of the binary labels). Then, per instrument, the model the
estimate picks, its F1 against the best possible pick and the default's; and over models x
instruments the Spearman correlation of estimate and F1. ``--quick``: the crops in
tests/data (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, write_result

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _read(path: Path, z: tuple[int, int] | None = None) -> np.ndarray:
    import tifffile

    return tifffile.imread(path) if z is None else tifffile.imread(path, key=range(*z))


def instruments(quick: bool) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, raw, per-slice true instances) of each held-out part."""
    from skimage.measure import label

    def cc(binary):
        return np.stack([label(b > 0, connectivity=1) for b in binary])

    if quick:
        tests = ROOT / "tests" / "data"
        return [
            ("Lucchi crop", _read(tests / "lucchi_crop_raw.tif")[:4],
             _read(tests / "lucchi_crop_instances_2d.tif")[:4].astype(np.int64)),
            ("fafb crop", _read(tests / "fafb_crop_raw.tif"),
             cc(_read(tests / "fafb_crop_mito_binary.tif"))),
        ]  # fmt: skip
    lucchi, cdeep, fafb = DATA / "lucchi_train", DATA / "cdeep3m_sbem", DATA / "fafb_sstem"
    return [
        ("Lucchi FIB-SEM slab z 132-164", _read(lucchi / "raw.tif", (132, 165)),
         _read(lucchi / "mito_instances_per_slice_2d.tif", (132, 165)).astype(np.int64)),
        ("CDeep3M SBEM validation", _read(cdeep / "validation_raw.tif"),
         cc(_read(cdeep / "validation_mito_binary.tif"))),
        ("fafb ssTEM sections 6-7", _read(fafb / "raw.tif", (6, 8)),
         _read(fafb / "mito_instances_per_slice_2d.tif", (6, 8)).astype(np.int64)),
    ]  # fmt: skip


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def run(args) -> dict:
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.metrics import evaluate
    from empanada_napari.core.quality import estimate_quality

    models = args.models.split(",")
    rows = []
    for name, raw, truth in instruments(args.quick):
        for model in models:
            engine = Engine2D(model, args.device)
            estimate_quality(raw[:1], engine)  # warm: the timed figure is the check itself
            t0 = time.perf_counter()
            est = estimate_quality(raw, engine)
            seconds = time.perf_counter() - t0
            pred = engine.segment_slices(raw)
            f1 = evaluate(pred.astype(np.int64), truth, per_slice=True)["f1@0.5"]
            rows.append({"instrument": name, "model": engine.model.name, "estimate":
                         est.agreement, "f1@0.5": f1, "seconds": seconds})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    picks = []
    for name in dict.fromkeys(r["instrument"] for r in rows):
        these = [r for r in rows if r["instrument"] == name]
        chosen = max(these, key=lambda r: r["estimate"])
        best = max(these, key=lambda r: r["f1@0.5"])
        default = these[0]
        picks.append({"instrument": name, "auto": chosen["model"], "auto_f1": chosen["f1@0.5"],
                      "best": best["model"], "best_f1": best["f1@0.5"],
                      "default_f1": default["f1@0.5"]})  # fmt: skip
    est = [r["estimate"] for r in rows]
    f1 = [r["f1@0.5"] for r in rows]
    return {"rows": rows, "picks": picks, "spearman": spearman(est, f1) if len(rows) > 2 else None}


def tables(result: dict) -> str:
    a = markdown_table(
        ("instrument", "model", "flip agreement", "F1@0.5", "check s"),
        [
            (
                r["instrument"],
                r["model"],
                f"{r['estimate']:.3f}",
                f"{r['f1@0.5']:.3f}",
                f"{r['seconds']:.1f}",
            )
            for r in result["rows"]
        ],  # fmt: skip
    )
    b = markdown_table(
        ("instrument", "auto picks", "its F1@0.5", "best model (F1)", "default's F1"),
        [
            (
                p["instrument"],
                p["auto"],
                f"{p['auto_f1']:.3f}",
                f"{p['best']} ({p['best_f1']:.3f})",
                f"{p['default_f1']:.3f}",
            )
            for p in result["picks"]
        ],  # fmt: skip
    )
    return f"{a}\n\n{b}\n\nSpearman(estimate, F1) = {result['spearman']}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="Lucchi_Lite_v1,EM_Lite_v2", help="first: the default")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", type=Path, default=Path("runs/bench/model_choice.json"))
    args = p.parse_args(argv)
    result = run(args)
    write_result(args.json, "model_choice", argv, result)
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
