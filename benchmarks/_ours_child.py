"""This project's CLI in a fresh process, instrumented for ``benchmarks/compare_original.py``.

    python -m benchmarks._ours_child --json timing.json [--warm] -- segment IN -o OUT ...

Runs ``empanada_napari.cli.main`` on the arguments after ``--``, as the console script does,
and records: ``import_s`` (this package's CLI and inference modules, torch), ``pipeline_s``
(``main`` without the time spent reading the input and writing the labels),
``forward_in_run_s`` (the model calls the engine made during it), ``forward_s`` (the same
calls on the same inputs, timed alone afterwards once warm), ``peak_rss_gb`` (before the
replay). Inputs are spooled to a temporary file, not kept in memory. With ``--warm``,
``main`` runs a second time (the model is cached, as on a second click) and
``warm_pipeline_s`` is recorded.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

#: What ``cli.main("segment", ...)`` imports on its way, in any mode.
PIPELINE_MODULES = (
    "empanada_napari.core.inference.engine",
    "empanada_napari.core.inference.slices",
    "empanada_napari.core.inference.chunked",
    "empanada_napari.core.inference.stack",
    "empanada_napari.core.inference.ortho",
    "empanada_napari.core.output",
    "empanada_napari.core.preprocess",
)


class TimedModule:
    """Wraps a loaded scripted module: times and spools the calls made by the 2D engine.

    Calls from elsewhere (the loader's batch-support probe) run untimed: they are part of the
    pipeline's cost but not model calls the segmentation needs.
    """

    def __init__(self, module, spool) -> None:
        self.module, self.spool = module, spool
        self.calls: list[tuple[tuple[int, ...], int, bool, bool]] = []
        self.seconds = 0.0
        self.recording = True

    def __call__(self, x, render_steps: int = 2, interpolate_ins: bool = True):
        import numpy as np
        import torch

        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not (self.recording and caller.endswith("inference.engine")):
            return self.module(x, render_steps, interpolate_ins)
        t0 = time.perf_counter()
        out = self.module(x, render_steps, interpolate_ins)
        self.seconds += time.perf_counter() - t0
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        self.calls.append((tuple(x.shape), int(render_steps), bool(interpolate_ins), channels_last))
        np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32).tofile(self.spool)
        return out

    def replay(self, path: str) -> float:
        """Seconds of the recorded calls run again alone (after one warm-up call)."""
        import numpy as np
        import torch

        from empanada_napari.core.memory import reuse_freed_memory

        total = 0.0
        # Under the same allocator settings as the engine's run (core/memory.py).
        with open(path, "rb") as fh, torch.inference_mode(), reuse_freed_memory():
            for k, (shape, steps, interp, channels_last) in enumerate(self.calls):
                x = torch.from_numpy(np.fromfile(fh, np.float32, int(np.prod(shape))))
                x = x.reshape(shape)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if k == 0:
                    self.module(x, steps, interp)
                t0 = time.perf_counter()
                self.module(x, steps, interp)
                total += time.perf_counter() - t0
        return total

    def __getattr__(self, name):
        return getattr(self.module, name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--warm", action="store_true")
    args = p.parse_args(argv[:split])
    cli_args = argv[split + 1 :]

    import torch

    from empanada_napari import cli
    from empanada_napari.core import io
    from empanada_napari.core.models import loading

    # The CLI imports the inference modules inside its functions (a quick ``--help``); import
    # them here so that ``pipeline_s`` holds no imports, like 1.2.4's driver, which imports
    # its inference modules before its clock starts. They count in ``import_s``.
    for name in PIPELINE_MODULES:
        importlib.import_module(name)

    t_import = time.perf_counter()
    spool = tempfile.NamedTemporaryFile(suffix=".f32", delete=False)
    timed: list[TimedModule] = []
    io_seconds = [0.0]
    load_model = loading.load_model

    def timed_load(*a, **k):
        model = load_model(*a, **k)
        if not isinstance(model.module, TimedModule):
            model.module = TimedModule(model.module, spool)
            timed.append(model.module)
        return model

    def timed_io(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                io_seconds[0] += time.perf_counter() - t0

        return wrapper

    # cli and chunked import these inside their functions, so patching the modules suffices.
    loading.load_model = timed_load
    io.read_image = timed_io(io.read_image)
    io.write_labels = timed_io(io.write_labels)
    try:
        t0 = time.perf_counter()
        code = cli.main(cli_args)
        pipeline = time.perf_counter() - t0 - io_seconds[0]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        if code != 0:
            return code
        spool.close()
        module = timed[0]
        forward_in_run = module.seconds
        n_calls = len(module.calls)
        forward = module.replay(spool.name)
        warm = None
        if args.warm:
            module.recording = False
            io_seconds[0] = 0.0
            t0 = time.perf_counter()
            cli.main(cli_args)
            warm = time.perf_counter() - t0 - io_seconds[0]
    finally:
        spool.close()
        os.unlink(spool.name)
    result = {
        "side": "this project",
        "import_s": t_import - T_START,
        "pipeline_s": pipeline,
        "warm_pipeline_s": warm,
        "forward_in_run_s": forward_in_run,
        "forward_s": forward,
        "calls": n_calls,
        "peak_rss_gb": peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
