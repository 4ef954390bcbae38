"""Big volumes inside napari, as a user works with them (issue 38).

    xvfb-run -a -s "-screen 0 1366x768x24" python -m benchmarks.napari_at_size \\
        --data ../shared/data/lucchi_train/raw.tif --work runs/at_size \\
        --scenarios whole,region [--json out.json] [--screenshots docs/benchmarks_images]

Volumes are the real Lucchi FIB-SEM stack tiled (mirrored, no seams) into zarr stores: a
256 x 768 x 1024 volume (201 MB) and, for ``region``, a 2560 x 768 x 1024 one (2 GB). Each
scenario is one fresh napari process in a 1366 x 768 window:

- the volume is opened lazily (napari's own zarr reader: a dask array), given a voxel size
  of 5 x 5 x 5 nm, and the 3D Inference dock runs on it with its defaults into a zarr output
  folder (``whole``: all of the 201 MB volume; ``region``: slices 1000-1255 of the 2 GB one,
  the same number of voxels); timed from the click on Run to the result layer, with the
  process's peak resident memory (``ru_maxrss``: napari, the model, the run, everything);
- then the Delete Labels dock deletes ``--deletes`` objects of the zarr-backed result, one
  click each (a point on the object, Run): time per click (the first builds the label index
  chunk by chunk), resident memory after each, the deletion checked in the store on disk,
  and napari's undo checked to restore the store exactly;
- the result is reopened with the plugin's reader: its voxel size must come back.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._common import markdown_table, shape_text, write_result
from empanada_napari.widgets._napari_compat import main_window

SCALE = (5.0, 5.0, 5.0)
SCENARIOS = {
    # name: (volume shape, region (first slice, last slice) or None)
    "whole": ((256, 768, 1024), None),
    "region": ((2560, 768, 1024), (1000, 1255)),
}


def _rss_gb() -> float:
    """This process's resident memory now (GB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _child(args) -> dict:  # noqa: PLR0915 - one user session, step by step
    import napari
    from qtpy.QtWidgets import QApplication

    from empanada_napari.core.ngff import open_labels

    shape, region = SCENARIOS[args.child]
    source = Path(args.work) / f"volume_{shape_text(shape).replace(' ', '')}.zarr"
    out_dir = Path(args.work) / f"out_{args.child}"
    out_dir.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])

    def pump(seconds: float = 0.2) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.005)

    def wait(widget, limit: float = 3600) -> float:
        t0 = time.perf_counter()
        while widget.jobs.busy:
            app.processEvents()
            time.sleep(0.005)
            if time.perf_counter() - t0 > limit:
                raise TimeoutError(widget.jobs.status.value)
        return time.perf_counter() - t0

    result: dict = {"scenario": args.child, "volume": list(shape), "region": region}
    viewer = napari.Viewer(show=True)
    main_window(viewer).resize(1366, 768)
    t0 = time.perf_counter()
    (image,) = viewer.open(str(source), plugin="napari")
    image.scale = SCALE
    image.name = "volume"
    viewer.reset_view()
    pump(1.0)
    result["open_s"] = round(time.perf_counter() - t0, 2)
    result["rss_open_gb"] = round(_rss_gb(), 2)

    _, dock = viewer.window.add_plugin_dock_widget("empanada-napari", "3D Inference")
    dock.image.value = image
    dock.out_dir.value = str(out_dir)
    dock.overwrite.value = True
    if region is not None:
        dock.region.first.value, dock.region.last.value = region
    if args.memory:
        dock.memory_gb.value = args.memory
    pump(1.0)
    result["memory_gb"] = float(dock.memory_gb.value)
    result["plan"] = dock.plan.value
    layers = len(viewer.layers)
    t0 = time.perf_counter()
    dock.jobs.run_button.native.click()
    wait(dock)
    result["run_s"] = round(time.perf_counter() - t0, 1)
    result["status"] = dock.jobs.status.value
    result["peak_run_gb"] = round(_peak_gb(), 2)
    if len(viewer.layers) == layers:
        raise RuntimeError(f"no result layer: {dock.jobs.status.value}")
    labels = viewer.layers[-1]
    result["result_scale"] = [float(v) for v in labels.scale]
    result["result_translate"] = [float(v) for v in labels.translate]
    if args.screenshots:
        _shot(viewer, Path(args.screenshots) / f"at_size_{args.child}_3d.png")

    # -- the 2D dock on the slice on screen of the lazy volume
    viewer.dims.set_point(0, image.translate[0] + (shape[0] // 2) * image.scale[0])
    _, dock2d = viewer.window.add_plugin_dock_widget(
        "empanada-napari", "2D Inference (Parameter Testing)"
    )
    dock2d.image.value = image
    pump(0.5)
    t0 = time.perf_counter()
    dock2d.jobs.run_button.native.click()
    wait(dock2d, limit=600)
    result["slice_2d_s"] = round(time.perf_counter() - t0, 2)
    result["slice_2d_status"] = dock2d.jobs.status.value

    # -- edits on the zarr-backed result
    output = labels.metadata["empanada"]["output"]
    store = open_labels(output)  # a second, independent view
    z = store.shape[0] // 2
    plane = np.asarray(store[z])
    ids, counts = np.unique(plane[plane > 0], return_counts=True)
    chosen = ids[np.argsort(counts)[::-1][: args.deletes]]
    _, delete = viewer.window.add_plugin_dock_widget("empanada-napari", "Delete Labels")
    delete.labels_layer.value = labels
    viewer.dims.set_point(0, labels.translate[0] + z * labels.scale[0])
    points = delete.new_points_layer()
    pump(0.5)
    # The first deleted object's neighbourhood before any delete: undo must restore it.
    box_z = slice(max(0, z - 40), min(store.shape[0], z + 40))
    before = np.asarray(store[box_z])
    clicks, rss = [], []
    for label in chosen:
        yx = np.argwhere(plane == label)[0]
        points.data = np.array([[z, *yx]], float)
        t0 = time.perf_counter()
        delete.jobs.run_button.native.click()
        wait(delete)
        clicks.append(round(time.perf_counter() - t0, 3))
        rss.append(round(_rss_gb(), 2))
        if (np.asarray(store[z]) == label).any():  # read back from disk
            raise RuntimeError(f"label {label} not deleted on disk: {delete.jobs.status.value}")
    result["delete_status"] = delete.jobs.status.value
    result["click_s"] = clicks
    result["rss_after_click_gb"] = rss
    if args.screenshots:
        _shot(viewer, Path(args.screenshots) / f"at_size_{args.child}_delete.png")
    t0 = time.perf_counter()
    for _ in chosen:
        labels.undo()
    pump(0.5)
    result["undo_s"] = round(time.perf_counter() - t0, 2)
    result["undo_exact"] = bool(np.array_equal(np.asarray(store[box_z]), before))

    # -- reopen with the plugin's reader
    (again,) = viewer.open(output, plugin="empanada-napari")
    result["reopened"] = type(again).__name__
    result["reopened_scale"] = [float(v) for v in again.scale]
    result["reopened_translate"] = [float(v) for v in again.translate]
    result["peak_gb"] = round(_peak_gb(), 2)
    viewer.close()
    return result


def _shot(viewer, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    array = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(array[..., :3])
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def prepare(data: Path, work: Path, scenarios: list[str]) -> None:
    """Tile the real volume into the zarr inputs the scenarios need (kept between runs)."""
    import tifffile

    from benchmarks.memory import tile_volume

    raw = tifffile.imread(str(data))
    for name in scenarios:
        shape = SCENARIOS[name][0]
        path = work / f"volume_{shape_text(shape).replace(' ', '')}.zarr"
        tile_volume(raw, shape, path, (64, 768, 1024))


def markdown(result: dict) -> str:
    rows = []
    for r in result["runs"]:
        clicks = r["click_s"]
        rows.append(
            [
                r["scenario"],
                shape_text(r["volume"]),
                "all" if r["region"] is None else f"slices {r['region'][0]}-{r['region'][1]}",
                f"{r['memory_gb']:g}",
                r["plan"],
                r["run_s"],
                r["peak_run_gb"],
                f"{clicks[0]:.2f}",
                f"{max(clicks[1:]):.2f}" if len(clicks) > 1 else "",
                f"{r['rss_after_click_gb'][0]:.2f} -> {r['rss_after_click_gb'][-1]:.2f}",
                "yes" if r["undo_exact"] else "NO",
                r.get("slice_2d_s", ""),
                " x ".join(f"{v:g}" for v in r["reopened_scale"]),
            ]
        )
    return markdown_table(
        [
            "scenario", "volume", "segmented", "block memory (GB)", "blocks", "3D run (s)",
            "peak RSS (GB)", "first delete (s)", "later deletes, max (s)", "RSS over deletes (GB)",
            "undo exact", "2D dock, one slice (s)", "reopened scale",
        ],
        rows,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/lucchi_train/raw.tif")
    parser.add_argument("--work", default="runs/at_size")
    parser.add_argument("--scenarios", default="whole,region")
    parser.add_argument("--deletes", type=int, default=5)
    parser.add_argument("--memory", type=float, default=0.0, help="block memory (0: the dock's)")
    parser.add_argument("--screenshots", default="")
    parser.add_argument("--json", default="")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(_child(args)))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [s for s in args.scenarios.split(",") if s]
    prepare(Path(args.data), work, names)
    runs = []
    for name in names:
        cmd = [sys.executable, "-m", "benchmarks.napari_at_size", "--child", name]
        cmd += ["--work", str(work), "--deletes", str(args.deletes), "--memory", str(args.memory)]
        cmd += ["--screenshots", args.screenshots] if args.screenshots else []
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not lines:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"scenario {name} failed")
        runs.append(json.loads(lines[-1][len("RESULT ") :]))
        print(json.dumps(runs[-1]), flush=True)
    result = {"runs": runs}
    print(markdown(result))
    if args.json:
        write_result(Path(args.json), "napari_at_size", argv, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
