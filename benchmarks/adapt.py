"""The adaptation loop, headless: pick patches, "correct" them, finetune, score before/after.

    python -m benchmarks.adapt --data ../shared/data/cdeep3m_sbem --strategies random,uncertain \\
        --seeds 0,1,2 --patches 16 --iterations 300 --json runs/bench/adapt_cdeep3m.json
    python -m benchmarks.adapt --data ../shared/data/fafb_sstem --pick-z 0,6 --score-z 6,8 ...

Patches are picked from the training part (CDeep3M: ``training_*``; fafb: sections
``--pick-z``) with the chosen strategy and the start ``--model``; the user's corrections are
simulated by the ground truth of each picked patch (2D connected components of the binary
labels, as the data README prescribes for binary ground truth); the patches are saved as a
dataset (:func:`save_patches`) and the model is finetuned on them (:func:`finetune`). The
held-out part (CDeep3M: ``validation_*``; fafb: ``--score-z``) is scored slice by slice before
and after (F1@0.5, PQ, semantic IoU; true instances: 2D connected components). Wall and CPU
time of the finetuning are recorded. ``--quick`` runs in seconds on the crop in tests/data.

``--rounds N`` runs the loop N times: each round picks with the model of the round before
(never a place picked before: the dataset's manifest), saves into the same dataset, and
finetunes that model on every patch so far. Each round also counts the effort a user would
spend: the objects changed from the model's proposal to the correction (added, deleted,
redrawn, merged, split; :mod:`empanada_napari.core.training.effort`), summed per round, and
F1 per object changed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, write_result

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("f1@0.5", "f1@0.75", "pq", "semantic_iou", "n_pred", "n_gt")


def _read(path: Path, z: tuple[int, int] | None = None) -> np.ndarray:
    import tifffile

    if z is None:
        return tifffile.imread(path)
    return tifffile.imread(path, key=range(*z))


def load_parts(args) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(pick raw, pick binary, score raw, score binary, description) for the dataset."""
    if args.quick:
        raw = _read(ROOT / "tests/data/cdeep3m_val_crop_raw.tif")
        gt = _read(ROOT / "tests/data/cdeep3m_val_crop_mito_binary.tif")
        return raw[:1], gt[:1], raw[1:], gt[1:], "tests/data CDeep3M crop: pick z 0, score z 1"
    data = Path(args.data)
    if (data / "training_raw.tif").exists():
        return (
            _read(data / "training_raw.tif"),
            _read(data / "training_mito_binary.tif"),
            _read(data / "validation_raw.tif"),
            _read(data / "validation_mito_binary.tif"),
            f"{data.name}: pick from training, score validation",
        )
    pick, score = args.pick_z, args.score_z
    return (
        _read(data / "raw.tif", pick),
        _read(data / "mito_binary.tif", pick),
        _read(data / "raw.tif", score),
        _read(data / "mito_binary.tif", score),
        f"{data.name}: pick from z {pick[0]}-{pick[1] - 1}, score z {score[0]}-{score[1] - 1}",
    )


def score(model, raw: np.ndarray, binary: np.ndarray, device: str) -> dict:
    """Per-slice 2D scores of ``model`` on ``raw`` against ``binary`` (:func:`score_labels`)
    at the model's own settings (those finetuning chose, else the defaults), plus
    ``default_f1@0.5`` at the default settings with stray pieces left apart (the defaults
    before "join stray pieces", ``absorb_fragments``, became one) and ``joined_f1@0.5`` with
    them joined (today's defaults), from the same network outputs; where the tuned settings
    average over flips, ``no_flips_f1@0.5`` is the same without."""
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.postprocess import absorb_fragments
    from empanada_napari.core.models.loading import load_model
    from empanada_napari.core.settings import InferenceSettings

    loaded = load_model(model, device)
    apart = InferenceSettings(absorb_fragments=False)
    pred = Engine2D(loaded, settings=apart).segment_slices(raw)
    joined = np.stack([absorb_fragments(p) for p in pred])
    own = Engine2D(loaded)
    if own.settings in (InferenceSettings(), apart):
        tuned = joined if own.settings.absorb_fragments else pred
    else:
        tuned = own.segment_slices(raw)
    out = score_labels(tuned, binary) | {
        "default_f1@0.5": score_labels(pred, binary)["f1@0.5"],
        "joined_f1@0.5": score_labels(joined, binary)["f1@0.5"],
    }
    if own.settings.tta:  # how much of the tuned figure the averaging over flips gives
        plain = Engine2D(loaded, settings=replace(own.settings, tta=False))
        out["no_flips_f1@0.5"] = score_labels(plain.segment_slices(raw), binary)["f1@0.5"]
    return out


def score_labels(pred: np.ndarray, binary: np.ndarray) -> dict:
    """Per-slice 2D scores, true instances = 2D connected components of the binary mask.

    Two scorings: the predicted instances against the truth's components (``f1@0.5`` etc.),
    and the prediction's foreground components against the truth's (``components_f1@0.5``).
    Binary ground truth cannot tell touching mitochondria apart, so its components merge
    them, and an instance output that separates them is counted wrong; comparing components
    with components scores detection and shape alone, like with like.
    """
    from empanada_napari.core.metrics import evaluate

    pred = np.asarray(pred).astype(np.int64)
    truth = (np.asarray(binary) > 0).astype(np.int64)
    s = evaluate(pred, truth, per_slice=True, relabel_2d_cc=True)
    c = evaluate((pred > 0).astype(np.int64), truth, per_slice=True, relabel_2d_cc=True)
    return {k: s[k] for k in KEYS} | {
        "components_f1@0.5": c["f1@0.5"],
        "components_n_pred": c["n_pred"],
    }


def truth_instances(binary: np.ndarray) -> np.ndarray:
    """2D connected components per slice (the corrections a user would make)."""
    from skimage.measure import label

    return np.stack([label(b > 0, connectivity=1) for b in binary]).astype(np.int32)


def truth_patch(truth: np.ndarray, patch) -> np.ndarray:
    """The correction a user would make of ``patch``: the ground truth where it was cut."""
    from skimage.segmentation import relabel_sequential

    box = tuple(slice(a, b) for a, b in zip(patch.start, patch.stop, strict=True))
    cut = truth[box].reshape(patch.labels.shape)
    return relabel_sequential(cut)[0].astype(np.int32)


def one_run(args, parts, strategy: str, seed: int, before: dict, workdir: Path) -> dict:
    """``args.rounds`` rounds of the loop from ``args.model``: pick with the current model
    (never a place picked before), "correct" with the ground truth (counting the objects a
    user would change from the model's proposal), save into one dataset, finetune the
    current model on every patch so far, score. The row describes the last round and holds
    every round's scores and effort in ``rounds``."""
    from empanada_napari.core.training import (
        finetune,
        load_training_data,
        pick_patches,
        save_patches,
        stack_patches,
    )
    from empanada_napari.core.training.effort import correction_effort, total_effort
    from empanada_napari.core.training.manifest import picked_places

    pick_raw, pick_bin, val_raw, val_bin, _ = parts
    truth = truth_instances(pick_bin)
    folder = workdir / f"{strategy}-{seed}"
    models = workdir / f"{strategy}-{seed}-models"  # beside the dataset: it holds patches only
    model, rounds, result = args.model, [], None
    changed_so_far = 0
    for r in range(1, args.rounds + 1):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        patches = pick_patches(
            pick_raw,
            args.patches,
            args.patch_size,
            strategy=strategy if r == 1 or not args.later_strategy else args.later_strategy,
            prefill="model",
            model=model,
            device=args.device,
            seed=seed + 1000 * (r - 1),
            source="train",
            exclude=picked_places(folder, "train"),
        )
        pick_cpu, pick_wall = time.process_time() - cpu0, time.perf_counter() - wall0
        images, _ = stack_patches(patches)
        corrections = [truth_patch(truth, p) for p in patches]
        efforts = [
            correction_effort(p.labels, c) for p, c in zip(patches, corrections, strict=True)
        ]
        save_patches(
            folder,
            list(images),
            corrections,
            source="train",
            infos=[p.info() for p in patches],
            prefilled_by=str(model),
            allow_empty=True,
            efforts=efforts,
        )
        data = load_training_data(
            folder,
            val_fraction=0.0,
            patch_size=args.train_size,
            batch_size=args.batch_size,
            seed=seed,
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        # --grow-iterations: the same number of steps per patch in every round (300 steps
        # of 4 see 16 patches 75 times each, 48 patches only 25 times).
        steps = args.iterations * (r if args.grow_iterations else 1)
        result = finetune(
            args.model if args.from_start else model,
            data.dataset,
            name=f"adapt-{strategy}-{seed}-r{r}",
            output_dir=models,
            register=False,
            iterations=steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=seed,
            device=args.device,
            freeze_encoder=args.freeze_encoder or bool(args.unfreeze),
            unfreeze=args.unfreeze,
        )
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        after = score(result.model_path, val_raw, val_bin, args.device)
        effort = total_effort(efforts)
        changed_so_far += effort["changed"]
        rounds.append(
            {
                "round": r,
                "patches_so_far": data.n_train,
                "objects_in_patches": effort["objects"],
                "effort": effort,
                "objects_changed_so_far": changed_so_far,
                "pick_wall_s": round(pick_wall, 1),
                "pick_cpu_s": round(pick_cpu, 1),
                "finetune_cpu_min": round(cpu / 60, 2),
                "finetune_wall_min": round(wall / 60, 2),
                "f1@0.5": after["f1@0.5"],
                "f1_per_object_changed": round(
                    (after["f1@0.5"] - before["f1@0.5"]) / max(1, changed_so_far), 5
                ),
                "after": after,
            }
        )
        print(json.dumps({"strategy": strategy, "seed": seed} | rounds[-1]), flush=True)
        model = models / f"{result.name}.yaml"
    last = rounds[-1]
    row = {
        "strategy": strategy,
        "seed": seed,
        "patches": last["patches_so_far"],
        "objects_in_patches": sum(x["objects_in_patches"] for x in rounds),
        "objects_changed": changed_so_far,
        "pick_cpu_s": last["pick_cpu_s"],
        "pick_wall_s": last["pick_wall_s"],
        "finetune_cpu_min": last["finetune_cpu_min"],
        "finetune_wall_min": last["finetune_wall_min"],
        "tuned_settings": result.config.get("inference_settings"),
        "after": last["after"],
        "f1_gain": round(last["after"]["f1@0.5"] - before["f1@0.5"], 4),
        "components_f1_gain": round(
            last["after"]["components_f1@0.5"] - before["components_f1@0.5"], 4
        ),
        "rounds": rounds,
    }
    return row


def rounds_table(runs: list[dict], before: dict) -> str:
    """One row per round of every run: patches so far, objects the user changed, F1."""
    rows = []
    for run in runs:
        for r in run["rounds"]:
            e = r["effort"]
            rows.append(
                (
                    run["strategy"],
                    run["seed"],
                    r["round"],
                    r["patches_so_far"],
                    e["objects"],
                    f"{e['changed']} ({e['added']} added, {e['deleted']} deleted, "
                    f"{e['redrawn']} redrawn, {e['merged']} merged, {e['split']} split)",
                    r["objects_changed_so_far"],
                    f"{before['f1@0.5']:.3f} -> **{r['f1@0.5']:.3f}**",
                    f"{1000 * r['f1_per_object_changed']:.2f}",
                    f"{r['finetune_wall_min']:.1f}",
                )
            )
    header = (
        "strategy",
        "seed",
        "round",
        "patches so far",
        "objects in the round's patches",
        "objects changed this round",
        "objects changed so far",
        "F1@0.5 (held out)",
        "F1 gain per 1000 objects changed",
        "finetune wall min",
    )
    return markdown_table(header, rows)


def summarise(runs: list[dict], before: dict) -> list[dict]:
    """Median (and range) of F1@0.5 after finetuning per strategy."""
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == strategy]
        f1 = [r["after"]["f1@0.5"] for r in rs]
        comp = [r["after"]["components_f1@0.5"] for r in rs]
        joined = [r["after"]["joined_f1@0.5"] for r in rs]
        plain = [r["after"]["default_f1@0.5"] for r in rs]
        out.append(
            {
                "strategy": strategy,
                "seeds": len(rs),
                "f1_before": before["f1@0.5"],
                "f1_after_median": statistics.median(f1),
                "f1_after_min": min(f1),
                "f1_after_max": max(f1),
                "default_f1_after_median": statistics.median(plain),
                "joined_f1_before": before["joined_f1@0.5"],
                "joined_f1_after_median": statistics.median(joined),
                "joined_f1_after_min": min(joined),
                "joined_f1_after_max": max(joined),
                "components_f1_before": before["components_f1@0.5"],
                "components_f1_after_median": statistics.median(comp),
                "components_f1_after_min": min(comp),
                "components_f1_after_max": max(comp),
                "pq_after_median": statistics.median(r["after"]["pq"] for r in rs),
                "iou_after_median": statistics.median(r["after"]["semantic_iou"] for r in rs),
                "finetune_cpu_min_median": statistics.median(r["finetune_cpu_min"] for r in rs),
                "finetune_wall_min_median": statistics.median(r["finetune_wall_min"] for r in rs),
            }
        )
    return out


def table(summary: list[dict]) -> str:
    rows = [
        (
            s["strategy"],
            s["seeds"],
            f"{s['f1_before']:.3f}",
            f"**{s['f1_after_median']:.3f}** ({s['f1_after_min']:.3f}-{s['f1_after_max']:.3f})",
            f"{s['default_f1_after_median']:.3f}",
            f"{s['joined_f1_before']:.3f}",
            f"**{s['joined_f1_after_median']:.3f}** "
            f"({s['joined_f1_after_min']:.3f}-{s['joined_f1_after_max']:.3f})",
            f"{s['components_f1_before']:.3f}",
            f"**{s['components_f1_after_median']:.3f}** "
            f"({s['components_f1_after_min']:.3f}-{s['components_f1_after_max']:.3f})",
            f"{s['pq_after_median']:.3f}",
            f"{s['iou_after_median']:.3f}",
            f"{s['finetune_cpu_min_median']:.1f}",
            f"{s['finetune_wall_min_median']:.1f}",
        )
        for s in summary
    ]
    header = (
        "strategy",
        "seeds",
        "F1@0.5 before",
        "F1@0.5 after, model's tuned settings, median (range)",
        "F1@0.5 after, default settings",
        "F1@0.5 before, stray pieces joined",
        "F1@0.5 after, stray pieces joined",
        "components F1@0.5 before",
        "components F1@0.5 after, median (range)",
        "PQ after",
        "semantic IoU after",
        "finetune CPU min",
        "finetune wall min",
    )
    return markdown_table(header, rows)


def _pair(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.split(","))
    return a, b


def main(argv: list[str] | None = None) -> int:
    from empanada_napari.core.train_settings import FINETUNE

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cdeep3m_sbem"))
    p.add_argument("--model", default="default", help="start model: registry name or YAML/.pth")
    p.add_argument("--strategies", default="random,uncertain")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--patches", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=256, help="size of the picked patches")
    # The finetuning preset's values (core.settings.FINETUNE): what the CLI and docks use.
    p.add_argument("--train-size", type=int, default=FINETUNE.patch_size, help="training crop")
    p.add_argument("--iterations", type=int, default=FINETUNE.iterations)
    p.add_argument("--batch-size", type=int, default=FINETUNE.batch_size)
    p.add_argument("--lr", type=float, default=FINETUNE.lr)
    p.add_argument("--unfreeze", default="", help="encoder stages to train (frozen otherwise)")
    p.add_argument(
        "--freeze-encoder", action="store_true", help="train the heads only (and --unfreeze)"
    )
    p.add_argument(
        "--train-encoder", action="store_true", help="the whole network: the default now"
    )
    p.add_argument(
        "--pick-z",
        type=_pair,
        default=(0, 6),
        help="volumes without a training file: slices to pick from (start,stop)",
    )
    p.add_argument("--score-z", type=_pair, default=(6, 8), help="slices to score (start,stop)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="seconds, on the crop in tests/data")
    p.add_argument("--json", type=Path, default=Path("runs/bench/adapt.json"))
    p.add_argument(
        "--keep", type=Path, default=None, help="keep the patches and models in this folder"
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="rounds of the loop (pick again with the new model)"
    )
    p.add_argument(
        "--grow-iterations",
        action="store_true",
        help="round r trains r x --iterations steps (the same steps per patch every round)",
    )
    p.add_argument(
        "--later-strategy",
        default="",
        help="how rounds 2 and later pick (random, uncertain, ...; default: as round 1)",
    )
    p.add_argument(
        "--from-start",
        action="store_true",
        help="every round finetunes the start model on all patches (picks use the last model)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.patches, args.patch_size, args.train_size = 2, 96, 96
        args.iterations, args.batch_size = 2, 2
        args.seeds, args.strategies = "0", "random,uncertain"

    parts = load_parts(args)
    before = score(args.model, parts[2], parts[3], args.device)
    print("before", json.dumps(before), flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="adapt-") as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep
        workdir.mkdir(parents=True, exist_ok=True)
        for strategy in args.strategies.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                runs.append(one_run(args, parts, strategy, seed, before, workdir))
    summary = summarise(runs, before)
    settings = {
        k: getattr(args, k)
        for k in ("model", "patches", "patch_size", "train_size", "iterations", "batch_size")
    } | {
        "lr": args.lr,
        "unfreeze": args.unfreeze,
        "train_encoder": not (args.freeze_encoder or bool(args.unfreeze)),
        "rounds": args.rounds,
        "grow_iterations": args.grow_iterations,
        "from_start": args.from_start,
        "later_strategy": args.later_strategy,
    }
    write_result(
        args.json,
        "adapt",
        argv,
        {
            "meta": {"data": parts[4], **settings},
            "before": before,
            "runs": runs,
            "summary": summary,
        },
    )
    print(table(summary))
    print(rounds_table(runs, before))
    return 0


if __name__ == "__main__":
    sys.exit(main())
