"""Clicks on Run in the 2D and 3D inference docks, as a user makes them (issue 19).

    xvfb-run -a -s "-screen 0 1366x768x24" python -m benchmarks.dock_clicks \\
        --docks 2d,3d --repeats 3 [--json out.json]

Each measurement is a fresh process (cold: a user's first click after opening napari): a
1366 x 768 napari window with the bundled sample (16 x 512 x 512 FIB-SEM), the dock opened,
3 s for the user to read it, then three clicks on Run. Timed per click: from the click to the
result layer in the viewer (``click_s``), the dock's work in its job (``segment_s``: the model
and the pipeline) and in the GUI thread (``show_s``: adding the layer), and the longest the GUI
event loop went without serving a 10 ms timer (``gui_gap_ms``: how long the window froze).
Processes alternate with and without the docks' model preloading (``EMPANADA_NAPARI_PRELOAD``)
so that both sides see the same machine. Needs napari, a Qt binding and a display (Xvfb).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._common import write_result
from empanada_napari.widgets._napari_compat import main_window

DOCKS = {"2d": "2D Inference (Parameter Testing)", "3d": "3D Inference"}


def _child(dock: str, wait: float, clicks: int) -> dict:
    """One process: open the dock on the sample and click Run ``clicks`` times."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from empanada_napari._sample_data import make_sample_data
    from empanada_napari.widgets import inference_2d, inference_3d

    times: dict[str, list[float]] = {"segment_s": [], "show_s": []}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[key].append(time.perf_counter() - t0)

        return wrapper

    widget_cls = inference_2d.Inference2DWidget if dock == "2d" else inference_3d.Inference3DWidget
    if dock == "2d":
        inference_2d._segment = timed("segment_s", inference_2d._segment)
    else:
        inference_3d.segment = timed("segment_s", inference_3d.segment)
    widget_cls._show = timed("show_s", widget_cls._show)

    viewer = napari.Viewer(show=True)
    main_window(viewer).resize(1366, 768)
    data, meta, _ = make_sample_data()[0]
    viewer.add_image(data, **meta)
    app = QApplication.instance()
    _, widget = viewer.window.add_plugin_dock_widget("empanada-napari", DOCKS[dock])

    def pump(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    pump(wait)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    out: dict[str, list] = {"click_s": [], "gui_gap_ms": []}
    for _ in range(clicks):
        layers = len(viewer.layers)
        ticks.clear()
        t0 = time.perf_counter()
        widget.jobs.run_button.native.click()
        while len(viewer.layers) == layers or widget.jobs.busy:
            app.processEvents()
            time.sleep(0.002)
            if time.perf_counter() - t0 > 600:
                raise RuntimeError(f"no result after 600 s: {widget.jobs.status.value}")
        out["click_s"].append(time.perf_counter() - t0)
        gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
        out["gui_gap_ms"].append(1000 * max(gaps, default=0.0))
        pump(0.5)
    timer.stop()
    out |= times
    out["status"] = widget.jobs.status.value
    viewer.close()
    return out


def run(docks: list[str], repeats: int, wait: float = 3.0, clicks: int = 3) -> dict:
    """Per dock and preload setting: every process's clicks and the medians over processes."""
    result: dict = {}
    for dock in docks:
        runs: dict[str, list[dict]] = {"preload": [], "no preload": []}
        for _ in range(repeats):
            for name, flag in (("no preload", "0"), ("preload", "1")):
                env = {**os.environ, "EMPANADA_NAPARI_PRELOAD": flag}
                env.setdefault("QT_QPA_PLATFORM", "xcb")
                cmd = [sys.executable, "-m", "benchmarks.dock_clicks", "--child", dock,
                       "--wait", str(wait), "--clicks", str(clicks)]  # fmt: skip
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"{dock} ({name}) failed:\n{proc.stderr[-3000:]}")
                runs[name].append(json.loads(lines[-1]))
        result[dock] = {
            name: {
                "runs": rows,
                "median": {
                    key: [
                        round(statistics.median(row[key][i] for row in rows), 3)
                        for i in range(clicks)
                    ]
                    for key in ("click_s", "segment_s", "show_s", "gui_gap_ms")
                },
            }
            for name, rows in runs.items()
        }
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docks", default="2d,3d")
    p.add_argument("--repeats", type=int, default=3, help="processes per setting")
    p.add_argument("--wait", type=float, default=3.0, help="seconds between opening and Run")
    p.add_argument("--clicks", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=sorted(DOCKS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.wait, args.clicks)))
        return 0
    result = run(args.docks.split(","), args.repeats, args.wait, args.clicks)
    for dock, sides in result.items():
        for name, side in sides.items():
            print(dock, name, side["median"])
    if args.json:
        write_result(args.json, "dock_clicks", argv if argv is not None else sys.argv[1:], result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
