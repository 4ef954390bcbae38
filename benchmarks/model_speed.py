"""Forward-pass time per slice for each architecture the package offers.

    python -m benchmarks.model_speed --size 1024 --repeats 3 [--device cuda] [--json out.json]

Random weights (speed does not depend on them), scripted with torch.jit.script as shipped,
eval mode, ``render_steps=2``; the first call is a warm-up and not counted. On CUDA also
float16 autocast and batch sizes 1/4/8. Also times the bundled model as loaded from disk.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

CONFIGS = [
    ("panoptic_lite", {}, "bundled-model architecture"),
    ("panoptic_deeplab_pr", {"encoder": "resnet50"}, "MitoNet_v1-size"),
    ("panoptic_bifpn_pr", {"encoder": "resnet50"}, "MitoNet_v1_mini-size"),
    ("panoptic_deeplab_pr", {"encoder": "resnet18"}, ""),
    ("panoptic_bifpn_pr", {"encoder": "resnet18"}, ""),
]


def time_forward(module, x, repeats: int, amp: bool = False) -> float:
    """Median seconds per call of ``module(x, 2, True)`` after one warm-up."""
    import torch

    def call():
        with (
            torch.inference_mode(),
            torch.autocast(x.device.type, enabled=amp, dtype=torch.float16),
        ):
            module(x, 2, True)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from empanada_napari.core.device import resolve_device
    from empanada_napari.core.models.architectures import build_model
    from empanada_napari.core.models.architectures.resnet import count_parameters
    from empanada_napari.core.models.loading import load_model

    device = resolve_device(args.device)
    rows = []
    models = []
    for arch, kwargs, note in CONFIGS:
        torch.manual_seed(0)
        models.append(
            (
                f"{arch}({kwargs.get('encoder', 'default')})",
                note,
                torch.jit.script(build_model(arch, **kwargs).eval()).to(device),
            )
        )
    try:
        bundled = load_model("default", device)
        models.append((bundled.name, "bundled, loaded from disk", bundled.module))
    except Exception as err:  # noqa: BLE001 - the table is still useful without it
        print(f"(bundled model not timed: {err})", file=sys.stderr)
    batches = (1, 4, 8) if device.type == "cuda" else (1,)
    for name, note, module in models:
        for batch in batches:
            x = torch.randn(batch, 1, args.size, args.size, device=device)
            row = {
                "model": name,
                "note": note,
                "params_m": count_parameters(module) / 1e6,
                "batch": batch,
                "fp32_s_per_slice": time_forward(module, x, args.repeats) / batch,
            }
            if device.type == "cuda":
                row["fp16_s_per_slice"] = time_forward(module, x, args.repeats, True) / batch
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {
        "size": args.size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
