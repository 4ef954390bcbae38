"""Accuracy of a model on a labelled EM volume: 2D (per slice), 3D stack and ortho-plane.

    python -m benchmarks.accuracy --model default --data ../shared/data/lucchi_train \\
        --z 132,165 --json results/lucchi_heldout.json

``--data`` is a folder holding a raw volume and a ground truth (found by name: ``raw.tif``
or ``*_raw.tif``; ``*binary*.tif`` for the foreground mask), or give ``--raw`` / ``--gt``.
Ground-truth instances are connected components of the binary mask: per slice (2D) for the
2D scores and in 3D for the 3D scores, as the data README prescribes. Prints a table and
writes JSON. ``--quick`` runs on the small real crop in tests/data (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, write_result
from empanada_napari.core.settings import LINKING, StackSettings

KEYS = ("semantic_iou", "f1@0.5", "f1@0.75", "pq", "ap@0.5", "n_pred", "n_gt")
HEADERS = ("semantic IoU", "F1@0.5", "F1@0.75", "PQ", "AP@0.5", "n_pred", "n_gt")  # of KEYS
MODES = ("2d", "stack", "ortho")


def find_volume(data: Path, split: str | None) -> tuple[Path, Path]:
    """Raw and binary ground-truth files of a data folder (``split`` e.g. 'validation')."""
    prefix = f"{split}_" if split else ""
    raws = sorted(p for p in data.glob(f"{prefix}*raw*.tif") if "unlabeled" not in p.name)
    gts = sorted(data.glob(f"{prefix}*binary*.tif"))
    if len(raws) != 1 or len(gts) != 1:
        raise SystemExit(
            f"Could not pick one raw and one *binary* tif in {data} "
            f"(split {split!r}): {raws}, {gts}; use --raw/--gt."
        )
    return raws[0], gts[0]


def run(
    model: str,
    raw: np.ndarray,
    binary: np.ndarray,
    *,
    modes=("2d", "stack"),
    device: str = "auto",
    engine_params: dict | None = None,
    stack_params: dict | None = None,
    save_labels: Path | None = None,
) -> dict:
    """Scores per mode: {'2d': {...}, 'stack': {...}} with timings and, for 3D modes, the
    diagnostics of :func:`diagnose_3d`. ``save_labels``: a folder for each 3D mode's labels."""
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.stack import segment_stack_3d
    from empanada_napari.core.metrics import as_instances, evaluate

    filters = StackSettings().updated(**(stack_params or {}))  # the size filters of the run

    engine = Engine2D(model, device, **(engine_params or {}))
    results: dict = {
        "model": engine.model.name,
        "shape": list(raw.shape),
        "engine": engine.settings.to_dict(),
    }
    truth = binary > 0
    pred2d = None
    if "2d" in modes:
        t0 = time.perf_counter()
        pred2d = engine.segment_slices(raw)
        seconds = time.perf_counter() - t0
        scores = evaluate(
            pred2d.astype(np.int64), truth.astype(np.int64), per_slice=True, relabel_2d_cc=True
        )
        results["2d"] = {k: scores[k] for k in KEYS} | {"seconds": seconds}
        results["2d"]["f1@0.5_mean"] = scores["f1@0.5_mean"]
    from empanada_napari.core.inference.ortho import segment_ortho

    runners = {"stack": segment_stack_3d, "ortho": segment_ortho}
    gt3d = None
    for mode in ("stack", "ortho"):
        if mode not in modes:
            continue
        t0 = time.perf_counter()
        pred3d = runners[mode](raw, engine, **(stack_params or {}))
        seconds = time.perf_counter() - t0
        if gt3d is None:
            gt3d = as_instances(truth.astype(np.uint8)).astype(np.int64)
        scores = evaluate(pred3d.astype(np.int64), gt3d)
        results[mode] = {k: scores[k] for k in KEYS} | {"seconds": seconds}
        results[mode] |= diagnose_3d(pred3d, gt3d, pred2d, filters.min_size, filters.min_extent)
        if save_labels is not None:
            save_labels.mkdir(parents=True, exist_ok=True)
            np.save(save_labels / f"{mode}.npy", pred3d)
    results["stack_params"] = stack_params or {}
    return results


def diagnose_3d(
    pred: np.ndarray, gt: np.ndarray, pred2d: np.ndarray | None, min_size: int, min_extent: int
) -> dict:
    """Why a 3D score is what it is: merges and splits (>= 0.5 of an object's voxels), the
    merged pairs the per-slice 2D result keeps apart in some slice (the 3D stage's fault), and
    the scores without the true objects the volume's border cuts ("whole") and without those
    the border-aware size filters remove by design ("sized")."""
    from empanada_napari.core.metrics import evaluate
    from empanada_napari.core.metrics_3d import (
        border_cut,
        merges_and_splits,
        separated_in_2d,
        size_filtered,
        without,
    )

    ms = merges_and_splits(pred, gt)
    out: dict = {"merges": ms.n_merges, "splits": ms.n_splits, "merged": ms.merges}
    if pred2d is not None:
        pairs = [(a, b) for gs in ms.merges.values() for a in gs for b in gs if a < b]
        seen = {f"{a}+{b}": separated_in_2d(gt, a, b, pred2d) for a, b in pairs}
        out["merged_pairs_2d"] = seen  # pair -> (slices with both, slices 2D separates)
        out["merges_2d_separates"] = sum(1 for _, apart in seen.values() if apart > 0)
    for name, drop in (
        ("whole", border_cut(gt)),
        ("sized", size_filtered(gt, min_size, min_extent)),
    ):
        scores = evaluate(*(a.astype(np.int64) for a in without(pred, gt, drop)))
        out[name] = {k: scores[k] for k in ("f1@0.5", "f1@0.75", "pq", "n_pred", "n_gt")}
        if scores["n_pred"] == scores["n_gt"] == 0:  # nothing left to score
            out[name] |= {"f1@0.5": None, "f1@0.75": None, "pq": None}
    return out


def _cell(value, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(results: dict) -> str:
    """A fixed-width text table: one row per mode, the KEYS and seconds as columns."""
    rows = [f"{'mode':<8}" + "".join(f"{k:>14}" for k in KEYS) + f"{'seconds':>10}"]
    for mode in MODES:
        if mode in results:
            r = results[mode]
            cells = "".join(f"{_cell(r[k], 4):>14}" for k in KEYS)
            rows.append(f"{mode:<8}{cells}{r['seconds']:>10.1f}")
    for mode in ("stack", "ortho"):
        r = results.get(mode)
        if r and "merges" in r:
            rows.append(
                f"{mode}: merges {r['merges']} (2D separates {r.get('merges_2d_separates', '?')})"
                f", splits {r['splits']}"
            )
            for name in ("whole", "sized"):
                part = {k: _cell(v, 4) for k, v in r[name].items()}
                rows.append(
                    f"  {name} objects: F1@0.5 {part['f1@0.5']} F1@0.75 {part['f1@0.75']} "
                    f"PQ {part['pq']} n_pred {part['n_pred']} n_gt {part['n_gt']}"
                )
    return "\n".join(rows)


def settings_label(result: dict) -> str:
    """The settings of a run in a few words (confidence, flips, 3D filters)."""
    engine = result.get("engine", {})
    stack = result.get("stack_params", {})
    words = [f"confidence {engine.get('confidence_thr', 0.5):g}"]
    if engine.get("tta"):
        words.append("flip TTA")
    if stack:
        words.append(
            f"median {stack['median_slices']}, min_size {stack['min_size']}, "
            f"min_extent {stack['min_extent']}"
        )
        if "linking" in stack:
            border = "border-aware" if stack.get("border_aware", True) else "not border-aware"
            words.append(f"{stack['linking']} linking, {border}")
    return "; ".join(words)


def markdown(result: dict | list[dict]) -> str:
    """The table as markdown for docs/benchmarks.md (scores to 3 decimals); several runs
    (e.g. two settings) give one row per run and mode, labelled with the settings."""
    results = result if isinstance(result, list) else [result]
    rows = [
        [mode, settings_label(r)] + [_cell(r[mode][k], 3) for k in KEYS]
        for r in results
        for mode in MODES
        if mode in r
    ]
    return markdown_table(("mode", "settings", *HEADERS), rows)


def main(argv: list[str] | None = None) -> int:
    """Score the model on the chosen volume; print the table, write or print the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--data", type=Path, help="folder with a raw and a *binary* tif")
    p.add_argument("--split", help="file prefix inside --data, e.g. validation or training")
    p.add_argument("--raw", type=Path)
    p.add_argument("--gt", type=Path, help="binary (or label) ground truth")
    p.add_argument("--z", help="slice range start,stop (e.g. the held-out slab 132,165)")
    p.add_argument("--modes", default="2d,stack,ortho")
    p.add_argument("--device", default="auto")
    p.add_argument("--confidence", type=float, default=0.5)
    p.add_argument("--min-distance", type=int, default=3)
    p.add_argument("--fine-boundaries", action="store_true")
    p.add_argument("--downsample", type=int, default=1)
    p.add_argument("--tta", action="store_true", help="average over flips (4x the network)")
    p.add_argument("--median-slices", type=int, default=3)
    p.add_argument("--min-size", type=int, default=500)
    p.add_argument("--min-extent", type=int, default=5)
    defaults = StackSettings()
    p.add_argument("--linking", choices=LINKING, default=defaults.linking, help="3D modes")
    p.add_argument(
        "--border-aware",
        action=argparse.BooleanOptionalAction,
        default=defaults.border_aware,
        help="3D modes: judge objects cut by the volume border by what is seen of them",
    )
    p.add_argument("--quick", action="store_true", help="tiny real crop from tests/data")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--save-labels", type=Path, help="folder for the 3D labels (<mode>.npy)")
    args = p.parse_args(argv)

    import tifffile

    if args.quick:
        data = Path(__file__).resolve().parents[1] / "tests" / "data"
        args.raw, args.gt = data / "lucchi_crop_raw.tif", data / "lucchi_crop_mito_binary.tif"
    elif args.data is not None:
        args.raw, args.gt = find_volume(args.data, args.split)
    if args.raw is None or args.gt is None:
        p.error("give --data, --raw/--gt or --quick")
    key = None
    if args.z:
        start, stop = (int(v) for v in args.z.split(","))
        key = range(start, stop)
    raw = tifffile.imread(args.raw, key=key)
    binary = tifffile.imread(args.gt, key=key)
    results = run(
        args.model,
        raw,
        binary,
        modes=tuple(args.modes.split(",")),
        device=args.device,
        engine_params={
            "confidence_thr": args.confidence,
            "min_distance_object_centers": args.min_distance,
            "fine_boundaries": args.fine_boundaries,
            "downsample": args.downsample,
            "tta": args.tta,
        },
        stack_params={
            "median_slices": args.median_slices,
            "min_size": args.min_size,
            "min_extent": args.min_extent,
            "linking": args.linking,
            "border_aware": args.border_aware,
        },
        save_labels=args.save_labels,
    )
    results["data"] = {"raw": str(args.raw), "gt": str(args.gt), "z": args.z}
    print(format_table(results))
    if args.json:
        write_result(args.json, "accuracy", argv, results)
    else:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
