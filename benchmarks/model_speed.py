"""Forward-pass time per slice for each architecture the package offers.

    python -m benchmarks.model_speed --size 1024 --repeats 3 [--device cuda] [--json out.json]
        [--archs panoptic_lite,bundled]

Random weights (speed does not depend on them), scripted with torch.jit.script as shipped,
eval mode, ``render_steps=2``; the first call is a warm-up and not counted. On CUDA also
float16 autocast and batch sizes 1/4/8. Also times every bundled model as loaded from disk
(the default first), so they are compared in one run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from benchmarks._common import markdown_table, time_call, write_result

CONFIGS = [
    ("panoptic_lite", {}, "bundled-model architecture"),
    ("panoptic_deeplab_pr", {"encoder": "resnet50"}, "MitoNet_v1-size"),
    ("panoptic_bifpn_pr", {"encoder": "resnet50"}, "MitoNet_v1_mini-size"),
    ("panoptic_deeplab_pr", {"encoder": "resnet18"}, ""),
    ("panoptic_bifpn_pr", {"encoder": "resnet18"}, ""),
]


def time_forward(module, x, repeats: int, amp: bool = False) -> float:
    """Median seconds per call of ``module(x, 2, True)`` after one warm-up, with freed memory
    kept for reuse as during a segmentation job (core/memory.py)."""
    import torch

    from empanada_napari.core.memory import reuse_freed_memory

    def call():
        with (
            torch.inference_mode(),
            torch.autocast(x.device.type, enabled=amp, dtype=torch.float16),
        ):
            module(x, 2, True)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    with reuse_freed_memory():
        return time_call(call, repeats)


def selected(name: str, archs: str | None) -> bool:
    """Whether model ``name`` (``arch(encoder)`` or ``bundled``) passes the ``--archs`` filter."""
    if not archs:
        return True
    wanted = {a.strip() for a in archs.split(",")}
    return name in wanted or name.split("(")[0] in wanted


def bundled_models() -> list[str]:
    """Names of the built-in models whose file ships in the package (no download)."""
    from empanada_napari.core.models.registry import get_registry

    return [
        e.name
        for e in get_registry().entries()
        if e.builtin and not str(e.model_source).startswith(("http://", "https://"))
    ]


def markdown(result: dict) -> str:
    """The docs/benchmarks.md table of a ``--json`` result (CUDA: batch and fp16 columns)."""
    rows = result["rows"]
    cuda = any("fp16_s_per_slice" in r for r in rows)
    threads = result["meta"].get("torch_threads", result["meta"].get("threads"))
    if cuda:
        header = ["model", "parameters", "batch", "fp32 s / slice", "fp16 s / slice"]
    else:
        header = ["model", "parameters", f"s / slice (CPU, {threads} threads)"]
    table = []
    for r in rows:
        # panoptic_bifpn_pr(resnet50) -> panoptic_bifpn_pr, ResNet-50, as the doc wrote them.
        model = re.sub(r"\(resnet(\d+)\)$", r", ResNet-\1", r["model"].replace("(default)", ""))
        model += f" ({r['note']})" if r["note"] else ""
        cells = [model, f"{r['params_m']:.1f} M"]
        if cuda:
            cells += [r["batch"], f"{r['fp32_s_per_slice']:.3g}", f"{r['fp16_s_per_slice']:.3g}"]
        else:
            cells.append(f"{r['fp32_s_per_slice']:.3g}")
        table.append(cells)
    return markdown_table(header, table)


def main(argv: list[str] | None = None) -> int:
    """Time every selected model; print one JSON row per model and batch."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--archs", help="comma list of architectures (or arch(encoder)) and/or 'bundled'"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch

    from empanada_napari.core.device import resolve_device
    from empanada_napari.core.models.architectures import build_model
    from empanada_napari.core.models.architectures.resnet import count_parameters
    from empanada_napari.core.models.contract import load_torchscript
    from empanada_napari.core.models.loading import default_model_name, load_model

    device = resolve_device(args.device)
    rows = []
    models = []
    for arch, kwargs, note in CONFIGS:
        name = f"{arch}({kwargs.get('encoder', 'default')})"
        if not selected(name, args.archs):
            continue
        torch.manual_seed(0)
        module = torch.jit.script(build_model(arch, **kwargs).eval()).to(device)
        models.append((name, note, module, count_parameters(module)))
    if selected("bundled", args.archs):
        # Every model that ships in the package, side by side in one run (the default first).
        default = default_model_name()
        for name in sorted(bundled_models(), key=lambda n: n != default):
            try:
                loaded = load_model(name, device)
            except Exception as err:  # noqa: BLE001 - the table is still useful without it
                print(f"(bundled model {name} not timed: {err})", file=sys.stderr)
                continue
            note = "bundled, default" if name == default else "bundled"
            # Counted on the file as saved: the loaded module is frozen on the CPU, its
            # weights are constants then, not parameters.
            params = count_parameters(load_torchscript(loaded.path, "cpu"))
            models.append((loaded.name, note + ", loaded from disk", loaded.module, params))
    batches = (1, 4, 8) if device.type == "cuda" else (1,)
    for name, note, module, params in models:
        for batch in batches:
            x = torch.randn(batch, 1, args.size, args.size, device=device)
            row = {
                "model": name,
                "note": note,
                "params_m": params / 1e6,
                "batch": batch,
                "fp32_s_per_slice": time_forward(module, x, args.repeats) / batch,
            }
            if device.type == "cuda":
                row["fp16_s_per_slice"] = time_forward(module, x, args.repeats, True) / batch
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        meta = {"size": args.size, "device": str(device)}
        write_result(args.json, "model_speed", argv, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
