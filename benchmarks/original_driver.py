"""Drive the original empanada-napari 1.2.4 headless, for ``benchmarks/compare_original.py``.

Runs with the Python of the separate venv built by ``scripts/setup_original_venv.sh``; it
imports nothing from this project. 1.2.4 has no command line: its napari widgets build an
``Engine2d`` / ``Engine3d`` (``empanada_napari.inference``) and call ``infer`` per slice (2D
batch mode), ``infer_on_axis`` + ``stack_postprocessing`` (stack) or ``infer_on_axis`` on xy,
xz, yz + ``tracker_consensus`` (ortho-plane). This script does exactly that with the widgets'
parameter mapping, so napari and Qt are not needed: the package ``__init__`` (which imports
every widget) is bypassed and ``napari.qt.threading.thread_worker`` is stubbed to run inline.

    python benchmarks/original_driver.py --check
    python benchmarks/original_driver.py --mode 2d --input slab.tif --output labels.npy \\
        --config model.yaml --home DIR --json timing.json [--replay]

The model is registered the way a 1.2.4 user does it (``add_new_model`` with a config YAML in
its format) under ``--home`` (``~/.empanada`` lives there, not in the real home). Timing JSON:
``import_s``, ``load_s`` (engine + model load), ``run_s`` (segmentation to labels in memory),
``forward_in_run_s`` (the model calls inside the run), and with ``--replay`` ``forward_s``:
the same model calls, with the same inputs, timed again alone once warm (the floor). Inputs
are spooled to a temporary file, not kept in memory, so ``peak_rss_gb`` is not inflated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import types
from pathlib import Path

T_START = time.perf_counter()


def _import_original():
    """Import 1.2.4's inference module without its widgets (no napari, no Qt)."""
    import importlib.util

    spec = importlib.util.find_spec("empanada_napari")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("empanada_napari (1.2.4) is not installed in this Python")
    pkg = types.ModuleType("empanada_napari")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["empanada_napari"] = pkg
    napari = types.ModuleType("napari")
    qt = types.ModuleType("napari.qt")
    threading_mod = types.ModuleType("napari.qt.threading")
    threading_mod.thread_worker = lambda fn=None, **_: fn  # run inline
    napari.qt = qt
    qt.threading = threading_mod
    stubs = {"napari": napari, "napari.qt": qt, "napari.qt.threading": threading_mod}
    for name, mod in stubs.items():
        sys.modules.setdefault(name, mod)
    import empanada_napari.inference as inference
    import empanada_napari.utils as utils

    return inference, utils


class TimedModel:
    """Wraps the scripted model: times each call made by the engine, spools its inputs."""

    def __init__(self, module, spool) -> None:
        self.module = module
        self.spool = spool
        self.calls: list[tuple[tuple[int, ...], int, bool]] = []
        self.seconds = 0.0

    def __call__(self, x, render_steps=2, interpolate_ins=True):
        import numpy as np

        t0 = time.perf_counter()
        out = self.module(x, render_steps, interpolate_ins=interpolate_ins)
        self.seconds += time.perf_counter() - t0
        self.calls.append((tuple(x.shape), int(render_steps), bool(interpolate_ins)))
        if self.spool is not None:
            np.ascontiguousarray(x.numpy(), dtype=np.float32).tofile(self.spool)
        return out

    def replay(self, path: str) -> float:
        """Seconds of the recorded calls run again on their inputs (after one warm-up call)."""
        import numpy as np
        import torch

        total = 0.0
        with open(path, "rb") as fh, torch.no_grad():
            for k, (shape, steps, interp) in enumerate(self.calls):
                x = torch.from_numpy(np.fromfile(fh, np.float32, int(np.prod(shape))))
                x = x.reshape(shape)
                if k == 0:
                    self.module(x, steps, interpolate_ins=interp)
                t0 = time.perf_counter()
                self.module(x, steps, interpolate_ins=interp)
                total += time.perf_counter() - t0
        return total

    def __getattr__(self, name):
        return getattr(self.module, name)


def _register(utils, config_path: Path, home: Path) -> str:
    """Register the model under ``home/.empanada`` as 1.2.4's register widget does."""
    os.environ["HOME"] = str(home)
    name = "BenchModel"
    target = home / ".empanada" / "configs" / f"{name}.yaml"
    if target.exists():
        target.unlink()
    utils.add_new_model(name, str(config_path))
    return name


def _engine_2d(inference, config, args):
    return inference.Engine2d(
        config,
        inference_scale=1,
        nms_kernel=args.min_distance,
        nms_threshold=args.center_confidence,
        confidence_thr=args.confidence,
        label_divisor=args.label_divisor,
        semantic_only=False,
        fine_boundaries=False,
        tile_size=0,
        use_gpu=args.device == "cuda",
        use_quantized=False,
    )


def _engine_3d(inference, config, args):
    return inference.Engine3d(
        config,
        inference_scale=1,
        median_kernel_size=args.median_slices,
        nms_kernel=args.min_distance,
        nms_threshold=args.center_confidence,
        confidence_thr=args.confidence,
        min_size=args.min_size,
        min_extent=args.min_extent,
        fine_boundaries=False,
        label_divisor=args.label_divisor,
        use_gpu=args.device == "cuda",
        use_quantized=False,
        semantic_only=False,
        save_panoptic=False,
        store_url=None,
        chunk_size=(256, 256, 256),
    )


def _segment(inference, config, engine, volume, args):
    """The labels, as the widgets compute them (2D batch mode, stack, or ortho-plane)."""
    import numpy as np

    if args.mode == "2d":  # engine.infer per slice; it always splits fragments
        return np.stack([engine.infer(plane) for plane in volume])
    kwargs = dict(label_divisor=args.label_divisor, min_size=args.min_size)
    kwargs |= dict(min_extent=args.min_extent, dtype=engine.dtype, chunk_size=(256, 256, 256))
    if args.mode == "stack":
        _, trackers = engine.infer_on_axis(volume, args.axis)
        gen = inference.stack_postprocessing({args.axis: trackers}, None, config, **kwargs)
    else:
        trackers_dict = {}
        for axis in ("xy", "xz", "yz"):
            _, trackers = engine.infer_on_axis(volume, axis)
            trackers_dict[axis] = trackers
        gen = inference.tracker_consensus(
            trackers_dict,
            None,
            config,
            pixel_vote_thr=args.pixel_vote,
            cluster_iou_thr=0.75,
            allow_one_view=False,
            **kwargs,
        )
    labels = None
    for vol, _class_name, _instances in gen:  # one class (mito)
        labels = np.asarray(vol)
    return labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that 1.2.4 imports")
    p.add_argument("--mode", choices=["2d", "stack", "ortho"], default="2d")
    p.add_argument("--axis", default="xy")
    p.add_argument("--input", type=Path)
    p.add_argument("--output", type=Path, help=".npy labels")
    p.add_argument("--config", type=Path, help="model config YAML (1.2.4 format)")
    p.add_argument("--home", type=Path, help="folder used as HOME (holds .empanada)")
    p.add_argument("--json", type=Path)
    p.add_argument("--replay", action="store_true", help="time the model calls alone after")
    p.add_argument("--warm", action="store_true", help="then run the segmentation again")
    p.add_argument("--device", default="cpu")
    p.add_argument("--confidence", type=float, default=0.5)
    p.add_argument("--center-confidence", type=float, default=0.1)
    p.add_argument("--min-distance", type=int, default=3)
    p.add_argument("--label-divisor", type=int, default=10000)
    p.add_argument("--median-slices", type=int, default=3)
    p.add_argument("--min-size", type=int, default=500)
    p.add_argument("--min-extent", type=int, default=5)
    p.add_argument("--pixel-vote", type=int, default=2)
    args = p.parse_args(argv)

    inference, utils = _import_original()
    import numpy as np
    import tifffile
    import torch

    if args.check:
        print(f"empanada-napari 1.2.4 inference imports; torch {torch.__version__}")
        return 0
    t_import = time.perf_counter()
    volume = tifffile.imread(args.input)
    t_read = time.perf_counter()
    c_read = time.process_time()
    name = _register(utils, args.config.resolve(), args.home.resolve())
    config = utils.read_yaml(utils.get_configs()[name])
    spool = tempfile.NamedTemporaryFile(suffix=".f32", delete=False) if args.replay else None
    timed = TimedModel(None, spool)
    warm = None
    try:
        build = _engine_2d if args.mode == "2d" else _engine_3d
        engine = build(inference, config, args)
        timed.module = engine.engine.model
        engine.engine.model = timed
        t_load = time.perf_counter()
        labels = _segment(inference, config, engine, volume, args)
        t_run = time.perf_counter()
        cpu_run = time.process_time()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        np.save(args.output, labels.astype(np.uint32))
        forward_in_run, n_calls = timed.seconds, len(timed.calls)
        forward_alone = None
        if spool is not None:
            spool.close()
            forward_alone = timed.replay(spool.name)
        if args.warm:  # a second click: the widget keeps its engine and model
            timed.spool = None
            t0 = time.perf_counter()
            _segment(inference, config, engine, volume, args)
            warm = time.perf_counter() - t0
    finally:
        if spool is not None:
            spool.close()
            os.unlink(spool.name)
    result = {
        "side": "1.2.4",
        "import_s": t_import - T_START,
        "read_s": t_read - t_import,
        "load_s": t_load - t_read,
        "run_s": t_run - t_load,
        "pipeline_s": t_run - t_read,
        "pipeline_cpu_s": cpu_run - c_read,
        "warm_pipeline_s": warm,
        "forward_in_run_s": forward_in_run,
        "forward_s": forward_alone,
        "calls": n_calls,
        "peak_rss_gb": peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
