"""Helpers shared by the benchmark scripts: machine description, timing, JSON and markdown."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.strip()


def git_commit() -> str:
    """Short commit of this checkout, ``-dirty`` if it has changes, ``unknown`` outside git."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return None


def machine_info() -> dict[str, Any]:
    """Date (UTC), commit, CPU, cores, torch threads, RAM, GPU and library versions."""
    import numpy
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": _ram_gb(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def time_call(
    fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def command_line(name: str, argv: Sequence[str] | None) -> str:
    """The command that ran benchmark ``name`` with ``argv`` (``sys.argv`` when None)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", f"benchmarks.{name}", *args])


def write_result(path: Path, name: str, argv: Sequence[str] | None, result: dict) -> None:
    """Write ``result`` as JSON with ``meta`` (machine, settings) and ``command`` on top.

    A ``meta`` dict already in ``result`` (run settings such as size or device) is kept and
    completed with :func:`machine_info`.
    """
    extra = result.get("meta", {})
    out = {"meta": machine_info() | extra, "command": command_line(name, argv)}
    out |= {k: v for k, v in result.items() if k != "meta"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def si(value: float) -> str:
    """Three significant digits with an M/G suffix where it helps: 3.59 M, 51 M, 812."""
    for factor, suffix in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def shape_text(shape: Sequence[int]) -> str:
    """``256^3`` for a cube, else ``16 x 512 x 512``."""
    if len(set(shape)) == 1 and len(shape) == 3:
        return f"{shape[0]}^3"
    return " x ".join(str(s) for s in shape)
