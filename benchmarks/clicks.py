"""Point and box prompts on real EM: does one click give the object a user clicked on?

    python -m benchmarks.clicks --data ../shared/data/lucchi_train --z 132,165 \\
        --model default --json runs/bench/clicks_lucchi.json
    python -m benchmarks.clicks --data ../shared/data/cdeep3m_sbem --model EM_Lite_v2
    python -m benchmarks.clicks --data ../shared/data/fafb_sstem --z 6,8

Scored as micro-sam's authors score point prompts: for every true 2D object (per-slice
instances; binary ground truth: per-slice connected components, as the data README
prescribes), one click at its deepest interior point (the maximum of its distance
transform); success = IoU >= 0.5 between the returned mask and that object. Also reported:
mean IoU, time per click (median, warm; and the first, cold, click with model loading),
what the automatic 2D result already has (the fraction of true objects it matches at IoU
>= 0.5, i.e. what a user gets without clicking), how many of the objects the automatic pass
misses one click recovers, and how often a click on background far (``--far`` pixels) from
any mitochondrion adds nothing. ``--boxes`` adds one box prompt per object (its bounding box
grown by 10 %). ``--quick`` runs on the real crop in tests/data (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import write_result

ROOT = Path(__file__).resolve().parents[1]


def _read(path: Path, z: tuple[int, int] | None) -> np.ndarray:
    import tifffile

    return tifffile.imread(path) if z is None else tifffile.imread(path, key=range(*z))


def load(args) -> tuple[np.ndarray, np.ndarray, str]:
    """(raw, per-slice true instances, description) of the chosen data."""
    from skimage.measure import label as cc_label

    if args.quick:
        raw = _read(ROOT / "tests/data/lucchi_crop_raw.tif", None)
        gt = _read(ROOT / "tests/data/lucchi_crop_mito_binary.tif", None)
        truth = np.stack([cc_label(g > 0, connectivity=1) for g in gt])
        return raw, truth, "tests/data Lucchi crop"
    data = Path(args.data)
    z = tuple(int(v) for v in args.z.split(",")) if args.z else None
    if (data / "validation_raw.tif").exists():
        raw = _read(data / "validation_raw.tif", z)
        binary = _read(data / "validation_mito_binary.tif", z)
        desc = f"{data.name} validation"
    else:
        raw = _read(data / "raw.tif", z)
        binary = _read(data / "mito_binary.tif", z)
        desc = data.name
    per_slice = data / "mito_instances_per_slice_2d.tif"
    if per_slice.exists():
        truth = _read(per_slice, z).astype(np.int64)
    else:
        truth = np.stack([cc_label(b > 0, connectivity=1) for b in binary])
    if z:
        desc += f" z {z[0]}-{z[1] - 1}"
    return raw, truth, desc


def deepest_points(truth_plane: np.ndarray, min_area: int) -> list[tuple[int, tuple[int, int]]]:
    """(id, (y, x)) of every object of a plane, at the maximum of its distance transform."""
    from scipy import ndimage as ndi

    out = []
    ids = [i for i in np.unique(truth_plane) if i]
    boxes = ndi.find_objects(truth_plane.astype(np.int64))
    for i in ids:
        box = boxes[i - 1]
        obj = truth_plane[box] == i
        if obj.sum() < min_area:
            continue
        dist = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        out.append((int(i), (int(y + box[0].start), int(x + box[1].start))))
    return out


def background_points(truth: np.ndarray, far: int, n: int, rng) -> list[tuple[int, int, int]]:
    """``n`` random (z, y, x) at least ``far`` pixels from any true object."""
    from scipy import ndimage as ndi

    out = []
    for z in range(truth.shape[0]):
        dist = ndi.distance_transform_edt(truth[z] == 0)
        ys, xs = np.nonzero(dist >= far)
        if len(ys) == 0:
            continue
        pick = rng.choice(len(ys), size=min(len(ys), -(-n // truth.shape[0])), replace=False)
        out += [(z, int(ys[k]), int(xs[k])) for k in pick]
    return out[:n]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def auto_matches(labels: np.ndarray, truth: np.ndarray) -> dict[tuple[int, int], bool]:
    """Whether each true object (z, id) has an automatic-result object at IoU >= 0.5."""
    from empanada_napari.core.metrics import match_instances

    out = {}
    for z in range(truth.shape[0]):
        m = match_instances(labels[z].astype(np.int64), truth[z].astype(np.int64))
        matched = set(int(t) for t, v in zip(m.gt_ids, m.ious, strict=True) if v >= 0.5)
        for i in np.unique(truth[z]):
            if i:
                out[(z, int(i))] = int(i) in matched
    return out


def run(args) -> dict:
    from empanada_napari.core.preprocess import intensity_range
    from empanada_napari.core.proofread.prompts import Prompter

    raw, truth, desc = load(args)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    prompter = Prompter(args.model, args.device)
    value_range = intensity_range(raw)
    cold_obj = deepest_points(truth[0], args.min_area)[0]
    prompter.point(raw, (0, *cold_obj[1]), value_range=value_range)
    cold = time.perf_counter() - t0
    from empanada_napari.core.inference.engine import Engine2D

    auto = Engine2D(prompter.engine.model).segment_slices(raw)
    found = auto_matches(auto, truth)
    clicks = []
    for z in range(raw.shape[0]):
        for i, (y, x) in deepest_points(truth[z], args.min_area):
            t = time.perf_counter()
            res = prompter.point(raw, (z, y, x), value_range=value_range)
            seconds = time.perf_counter() - t
            obj = truth[z][res.box[1:]] == i
            inter = np.count_nonzero(res.mask[0] & obj)
            score = inter / (np.count_nonzero(truth[z] == i) + np.count_nonzero(res.mask) - inter)
            clicks.append({"z": z, "id": i, "iou": float(score), "seconds": seconds,
                           "auto": found[(z, i)], "empty": res.empty})  # fmt: skip
            if args.limit and len(clicks) >= args.limit:
                break
        if args.limit and len(clicks) >= args.limit:
            break
    ious = np.array([c["iou"] for c in clicks])
    missed = [c for c in clicks if not c["auto"]]
    result = {
        "data": desc,
        "model": prompter.model_name,
        "objects": len(clicks),
        "click_success": float((ious >= 0.5).mean()),
        "click_mean_iou": float(ious.mean()),
        "auto_has": float(np.mean([c["auto"] for c in clicks])),
        "missed_by_auto": len(missed),
        "missed_recovered": (float(np.mean([c["iou"] >= 0.5 for c in missed])) if missed else None),
        "seconds_median": statistics.median(c["seconds"] for c in clicks),
        "seconds_cold": cold,
    }
    if args.background:
        pts = background_points(truth, args.far, args.background, rng)
        empty = [prompter.point(raw, p, value_range=value_range).empty for p in pts]
        result["background_clicks"] = len(pts)
        result["background_nothing"] = float(np.mean(empty))
    if args.boxes:
        from scipy import ndimage as ndi

        box_ious = []
        for z in range(raw.shape[0]):
            objs = ndi.find_objects(truth[z].astype(np.int64))
            for i, (_y, _x) in deepest_points(truth[z], args.min_area):
                b = objs[i - 1]
                grow = [max(1, round(0.05 * (s.stop - s.start))) for s in b]
                y0, x0 = max(0, b[0].start - grow[0]), max(0, b[1].start - grow[1])
                y1 = min(raw.shape[1], b[0].stop + grow[0])
                x1 = min(raw.shape[2], b[1].stop + grow[1])
                box = (z, y0, x0, y1, x1)
                res = prompter.box(raw, box, value_range=value_range)
                obj = truth[z][res.box[1:]] == i
                best = 0.0
                for k in np.unique(res.labels):
                    if k:
                        m = res.labels.reshape(obj.shape) == k
                        inter = np.count_nonzero(m & obj)
                        best = max(
                            best, inter / (np.count_nonzero(truth[z] == i) + m.sum() - inter)
                        )
                box_ious.append(best)
        box_ious = np.array(box_ious)
        result["box_success"] = float((box_ious >= 0.5).mean())
        result["box_mean_iou"] = float(box_ious.mean())
    if args.follow:
        result |= follow_3d(args, raw, prompter, value_range)
    result["clicks"] = clicks if args.details else None
    return result


def follow_3d(args, raw: np.ndarray, prompter, value_range) -> dict:
    """One click per true 3D object (3D connected components of the binary ground truth,
    the data README's approximation), at the deepest point of its largest slice, followed
    through the slices: 3D IoU with the object, slices found / true, seconds per object."""
    from skimage.measure import label as cc_label

    data = Path(args.data)
    z = tuple(int(v) for v in args.z.split(",")) if args.z else None
    name = (
        "validation_mito_binary.tif"
        if (data / "validation_raw.tif").exists()
        else "mito_binary.tif"
    )
    truth3d = cc_label(_read(data / name, z) > 0, connectivity=1)
    rows = []
    for i in range(1, int(truth3d.max()) + 1):
        obj = truth3d == i
        areas = obj.sum(axis=(1, 2))
        if obj.sum() < args.min_volume:
            continue
        zc = int(np.argmax(areas))
        (_, (y, x)), *_ = deepest_points(obj[zc].astype(np.int64), 1)
        t = time.perf_counter()
        found = prompter.follow(raw, (zc, y, x), value_range=value_range)
        seconds = time.perf_counter() - t
        rows.append({"iou": iou(found.full(raw.shape), obj), "seconds": seconds,
                     "slices_true": int((areas > 0).sum()),
                     "slices_found": int(found.box[0].stop - found.box[0].start)})  # fmt: skip
    ious = np.array([r["iou"] for r in rows])
    return {
        "follow_objects": len(rows),
        "follow_success": float((ious >= 0.5).mean()) if rows else None,
        "follow_mean_iou": float(ious.mean()) if rows else None,
        "follow_seconds_median": statistics.median(r["seconds"] for r in rows) if rows else None,
        "follow_rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/lucchi_train"))
    parser.add_argument("--z", default=None, help="slice range START,STOP (default: all)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--min-area", type=int, default=16, help="skip smaller true objects")
    parser.add_argument("--background", type=int, default=100, help="background clicks")
    parser.add_argument("--far", type=int, default=40, help="background: pixels from any object")
    parser.add_argument("--boxes", action="store_true", help="also one box prompt per object")
    parser.add_argument("--limit", type=int, default=0, help="at most this many objects")
    parser.add_argument("--follow", action="store_true", help="also follow one click per 3D object")
    parser.add_argument("--min-volume", type=int, default=500, help="follow: skip smaller objects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--details", action="store_true", help="keep every click in the JSON")
    parser.add_argument("--quick", action="store_true", help="the small crop in tests/data")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        write_result(Path(args.json), "clicks", argv, result)
    shown = {k: v for k, v in result.items() if k != "clicks"}
    print(json.dumps(shown, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
