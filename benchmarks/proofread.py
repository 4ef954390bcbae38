"""Time per proofreading edit with the label index (bounding box only) against a full scan.

    python -m benchmarks.proofread --data ../shared/data/lucchi_train \\
        --shape 512x1024x1024 --objects 15 --naive-repeats 5 [--json out.json]
        [--labels instances.tif]

The volume is the real Lucchi ground truth (3D instances), subsampled by ``--stride`` (3: each
mitochondrion keeps its shape at 15 nm voxels) and tiled with flips, each tile's objects
relabelled with fresh ids, so a 512 x 1024 x 1024 uint32 volume holds ~5,000 real objects.
For ``--objects`` objects of typical size (voxel counts between the ``--percentiles``, 40th
and 60th by default)
it times, per object:
- ``indexed``: the core function on the object's box + writing the box + updating the index
  (what a click in the widget costs, without the screen refresh);
- ``full scan``: the naive edit, ``labels == id`` over the whole volume (and for split a
  bounding box from that mask) followed by the same write;
and reports medians in milliseconds. Each edit is reverted (untimed) before the next one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, write_result

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lucchi_train"


def tiled_volume(truth: np.ndarray, shape: tuple[int, ...], stride: int) -> np.ndarray:
    """Tile the subsampled ground truth (flipped in turn) into ``shape``, fresh ids per tile."""
    small = truth[::stride, ::stride, ::stride]
    ids = np.unique(small)
    lut = np.zeros(int(ids.max()) + 1, np.uint32)
    lut[ids[ids > 0]] = np.arange(1, int((ids > 0).sum()) + 1, dtype=np.uint32)
    small = lut[small]
    per_tile = int(small.max()) + 1
    out = np.zeros(shape, np.uint32)
    tile = 0
    for z in range(0, shape[0], small.shape[0]):
        for y in range(0, shape[1], small.shape[1]):
            for x in range(0, shape[2], small.shape[2]):
                t = small[:: (-1) ** (tile % 2), :, :: (-1) ** (tile // 2 % 2)]
                view = out[z : z + t.shape[0], y : y + t.shape[1], x : x + t.shape[2]]
                part = t[: view.shape[0], : view.shape[1], : view.shape[2]]
                view[...] = np.where(part > 0, part + np.uint32(tile * per_tile), 0)
                tile += 1
    return out


def _ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bench(
    labels: np.ndarray,
    n_objects: int,
    naive_repeats: int,
    percentiles: tuple[float, float] = (40, 60),
    seed: int = 0,
) -> dict:
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    from empanada_napari.core.errors import InputError
    from empanada_napari.core.proofread import (
        LabelIndex,
        apply_edit,
        delete_labels,
        merge_labels,
        split_label,
    )

    t0 = time.perf_counter()
    index = LabelIndex.build(labels)
    build_s = time.perf_counter() - t0
    lo, hi = np.percentile(index.counts, percentiles)
    typical = index.ids[(index.counts >= lo) & (index.counts <= hi)]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(typical, size=min(n_objects, len(typical)), replace=False)
    centres = (index.lo + index.hi) / 2

    def neighbour(label_id: int) -> int:
        row = int(np.searchsorted(index.ids, label_id))
        d = np.abs(centres - centres[row]).sum(1)
        d[row] = np.inf
        return int(index.ids[np.argmin(d)])

    def indexed(make) -> float:
        holder = {}

        def run():
            holder["edit"] = make()
            apply_edit(labels, holder["edit"], index)

        ms = _ms(run)
        edit = holder["edit"]
        edit.revert(labels)
        index.update(labels, edit.box, old=edit.new, new=edit.old)
        return ms

    times: dict[str, list[float]] = {k: [] for k in ("merge", "split", "delete")}
    naive: dict[str, list[float]] = {k: [] for k in ("merge", "split", "delete")}
    boxes, split_skipped = [], 0
    for label_id in chosen:
        label_id = int(label_id)
        other = neighbour(label_id)
        boxes.append(index.union_box([label_id]))
        times["merge"].append(
            indexed(lambda a=label_id, b=other: merge_labels(labels, [a, b], index=index))
        )
        times["delete"].append(indexed(lambda a=label_id: delete_labels(labels, [a], index=index)))
        try:
            times["split"].append(
                indexed(lambda a=label_id: split_label(labels, a, index=index, min_distance=3))
            )
        except InputError:
            split_skipped += 1

    def naive_split(label_id: int) -> None:
        mask = labels == label_id  # the full-volume scan
        box = ndi.find_objects(mask.view(np.uint8))[0]
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        m = mask[box]
        dist = ndi.distance_transform_edt(m)
        peaks = peak_local_max(dist, min_distance=3, labels=m, exclude_border=False)
        seeds = np.zeros(m.shape, np.int32)
        seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        pieces = watershed(-dist, seeds, mask=m)
        region = labels[box]
        region[pieces > 1] = pieces[pieces > 1] + index.max_id
        labels[box] = region

    for label_id in chosen[:naive_repeats]:
        label_id = int(label_id)
        other = neighbour(label_id)
        box = index.union_box([label_id, other])
        saved = labels[box].copy()

        def merge(a=label_id, b=other):
            labels[(labels == b)] = a

        naive["merge"].append(_ms(merge))
        labels[box] = saved
        naive["delete"].append(_ms(lambda a=label_id: labels.__setitem__(labels == a, 0)))
        labels[box] = saved
        naive["split"].append(_ms(lambda a=label_id: naive_split(a)))
        labels[box] = saved
    consistent = index.equals(LabelIndex.build(labels))  # every edit was reverted exactly
    sizes = [int(np.prod([s.stop - s.start for s in b])) for b in boxes]
    return {
        "shape": list(labels.shape),
        "objects": len(index),
        "index_build_s": build_s,
        "typical_object_voxels": float(np.median(index.counts[np.isin(index.ids, chosen)])),
        "typical_box_voxels": float(np.median(sizes)),
        "timed_objects": len(chosen),
        "split_skipped": split_skipped,
        "index_consistent_after_all_edits": consistent,
        "indexed_ms": {k: statistics.median(v) for k, v in times.items() if v},
        "full_scan_ms": {k: statistics.median(v) for k, v in naive.items() if v},
    }


def _size_name(low: float, high: float) -> str:
    return "large" if low >= 90 else "small" if high <= 10 else "typical"


def markdown(result: dict | list[dict]) -> str:
    """The docs/benchmarks.md table: one row per result (e.g. the 40-60th and 95-100th runs)."""
    header = [
        "objects timed",
        "voxels (median)",
        "merge indexed / full",
        "split indexed / full",
        "delete indexed / full",
    ]
    rows = []
    for r in result if isinstance(result, list) else [result]:
        low, high = r["size_percentiles"]
        name = f"{_size_name(low, high)} ({low:g}-{high:g}th percentile)"
        cells = [
            f"{name}, {r['timed_objects']} objects",
            f"{r['typical_object_voxels']:,.0f}",
        ]
        for edit in ("merge", "split", "delete"):
            fast, full = r["indexed_ms"].get(edit), r["full_scan_ms"].get(edit)
            fast_text = "-" if fast is None else f"**{fast:,.1f}**"
            cells.append(f"{fast_text} / {'-' if full is None else f'{full:,.0f}'}")
        rows.append(cells)
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    """Build the tiled volume, time the edits and print (and optionally save) the result."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="holds mito_instances_3d_cc")
    p.add_argument("--labels", type=Path, help="a 3D instance tif instead of the one in --data")
    p.add_argument("--shape", default="512x1024x1024")
    p.add_argument("--stride", type=int, default=3)
    p.add_argument("--objects", type=int, default=15)
    p.add_argument("--naive-repeats", type=int, default=5)
    p.add_argument("--percentiles", default="40,60", help="object size range timed")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import tifffile

    shape = tuple(int(v) for v in args.shape.split("x"))
    truth = tifffile.imread(args.labels or args.data / "mito_instances_3d_cc.tif")
    labels = tiled_volume(truth, shape, args.stride)
    del truth
    pct = tuple(float(v) for v in args.percentiles.split(","))
    result = bench(labels, args.objects, args.naive_repeats, pct)
    result["size_percentiles"] = list(pct)
    print(json.dumps(result, indent=2), flush=True)
    if args.json:
        write_result(args.json, "proofread", argv, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
