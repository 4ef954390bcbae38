"""Side by side with the original empanada-napari 1.2.4: same model, data and settings (issue 19).

    bash scripts/setup_original_venv.sh            # once: /work/venv-orig with 1.2.4 + CPU torch
    python -m benchmarks.compare_original [--venv /work/venv-orig] [--modes 2d,stack,ortho] \\
        [--repeats 3] [--data ../shared/data/lucchi_train] [--json out.json]

Both sides run the bundled TorchScript model (registered in 1.2.4 through a config YAML in its
format, as its users do) on crops of the held-out Lucchi slab (z >= 132), with 1.2.4's
settings: confidence 0.5, centre threshold 0.1, NMS kernel 3, coarse boundaries, label divisor
10000, disconnected fragments split (1.2.4 always does; here ``--split-fragments``) and stray
pieces left apart (``--no-absorb-fragments``); stack
mode: median 3, min size 500, min extent 5, 1.2.4's slice linking and size filter
(``--linking legacy --no-border-aware``); ortho: 2 votes, cluster IoU 0.75. Each run is a
fresh process (cold, as a user running the CLI or clicking Run once): this project through its
CLI (``empanada_napari.cli.main``), 1.2.4 through ``benchmarks/original_driver.py`` in the other
venv. The two sides alternate run by run so that both share the machine's load; figures are
medians over ``--repeats``.

Per run: whole-process wall time (interpreter start to exit), its peak RSS, ``pipeline`` (model
load + segmentation, without imports and file I/O), ``forward`` (the same model calls with the
same inputs, timed alone afterwards once warm: the floor) and their ratio (cold). With
``--warm`` each process also runs the pipeline a second time (model cached, as on a second
click) for the warm ratio. Agreement (first repetition): foreground voxels that differ, and
whether the instance partitions are equal up to relabelling.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import ROOT, markdown_table, write_result

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lucchi_train"
DEFAULT_VENV = Path("/work/venv-orig")
#: Crops (z0:z1, y0:y1, x0:x1) of the held-out slab per mode.
CROPS = {
    "2d": "132:156,0:768,0:1024",
    "stack": "132:165,0:768,0:1024",
    "ortho": "132:165,0:384,0:384",
}
#: 1.2.4's 3D rules: its slice linking, and size filters blind to the volume's border.
LEGACY_3D = ["--linking", "legacy", "--no-border-aware"]
#: 1.2.4's post-processing of each image: it splits disconnected fragments and never joins
#: stray pieces to the object they touch (this project's default does).
FRAGMENTS = ["--split-fragments", "--no-absorb-fragments"]
#: 1.2.4's defaults (its widgets), as command-line options of this project's CLI.
ALIGNED = {
    "2d": [*FRAGMENTS, "--label-divisor", "10000"],
    # 1.2.4's slice linking and size filters (this project's defaults differ: issue 17).
    "stack": [*FRAGMENTS, "--median-slices", "3", "--min-size", "500", *LEGACY_3D],
    "ortho": [*FRAGMENTS, "--median-slices", "3", "--min-size", "500", *LEGACY_3D],
}


def _original_env() -> dict:
    """The environment for the other venv: without PYTHONPATH, which points at this project."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def original_python(venv: Path) -> Path | None:
    """The venv's python when it has empanada-napari 1.2.4, else None."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), str(ROOT / "benchmarks" / "original_driver.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_original_env(),
    )
    return python if done.returncode == 0 else None


def original_config(work: Path) -> Path:
    """The bundled model's config in 1.2.4's YAML format (absolute model path)."""
    import yaml

    from empanada_napari.core.models.loading import default_model_name
    from empanada_napari.core.models.registry import get_registry

    registry = get_registry()
    entry = registry.get(default_model_name(registry))
    config = dict(entry.config)
    keep = ("class_names", "labels", "thing_list", "padding_factor", "norms", "description")
    out = {k: config[k] for k in keep if k in config}
    out |= {"model": str(Path(registry.fetch(entry)).resolve()), "model_quantized": None}
    out["FINETUNE"] = config.get("FINETUNE", {})
    path = work / "original_model.yaml"
    path.write_text(yaml.safe_dump(out))
    return path


def write_crop(raw: Path, crop: str, path: Path) -> tuple[int, ...]:
    """Write the crop ``z0:z1,y0:y1,x0:x1`` of the volume ``raw`` to ``path``; its shape."""
    import tifffile

    (z0, z1), (y0, y1), (x0, x1) = (tuple(int(v) for v in p.split(":")) for p in crop.split(","))
    volume = tifffile.imread(raw, key=range(z0, z1))[:, y0:y1, x0:x1]
    tifffile.imwrite(path, volume)
    return volume.shape


def _timed_process(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """Run ``cmd``; (wall seconds, peak RSS in GB of that process, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss / 1e6, proc.returncode  # ru_maxrss is in KB on Linux


def run_ours(mode: str, image: Path, out: Path, timing: Path, warm: bool) -> dict:
    """One fresh process of this project's CLI (instrumented); its timing dict."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    cli = ["segment", str(image), "-o", str(out), "--overwrite", "--no-progress"]
    cli += ["--mode", mode, "--device", "cpu", *ALIGNED[mode]]
    cmd = [sys.executable, "-m", "benchmarks._ours_child", "--json", str(timing)]
    cmd += (["--warm"] if warm else []) + ["--", *cli]
    wall, rss, code = _timed_process(cmd, env)
    if code != 0:
        raise RuntimeError(f"this project's run failed ({code}): {shlex.join(cmd)}")
    return json.loads(timing.read_text()) | {"wall_s": wall, "process_peak_rss_gb": rss}


def run_original(python: Path, mode, image, out, timing, config, home, warm) -> dict:
    """One fresh process of 1.2.4 through the driver; its timing dict."""
    cmd = [str(python), str(ROOT / "benchmarks" / "original_driver.py"), "--mode", mode]
    cmd += ["--input", str(image), "--output", str(out), "--config", str(config)]
    cmd += ["--home", str(home), "--json", str(timing), "--replay"]
    cmd += ["--warm"] if warm else []
    wall, rss, code = _timed_process(cmd, _original_env())
    if code != 0:
        raise RuntimeError(f"1.2.4 run failed ({code}): {shlex.join(cmd)}")
    return json.loads(timing.read_text()) | {"wall_s": wall, "process_peak_rss_gb": rss}


def agreement(ours: Path, original: Path) -> dict:
    """Foreground voxels that differ and partition equality of the two label volumes."""
    import numpy as np
    import tifffile

    from empanada_napari.core.metrics import same_partition

    a = tifffile.imread(ours)
    b = np.load(original)
    a = a.reshape(b.shape) if a.size == b.size else a
    n_a = sum(len(np.unique(p[p > 0])) for p in a) if a.ndim == 3 else 0
    return {
        "foreground_voxels": int((a > 0).sum()),
        "foreground_differ": int(((a > 0) != (b > 0)).sum()),
        "same_partition": bool(same_partition(a, b)),
        "objects_ours": int(len(np.unique(a[a > 0]))),
        "objects_original": int(len(np.unique(b[b > 0]))),
        "objects_per_slice_sum_ours": int(n_a),
    }


def _median(rows: list[dict], key: str):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(mode: str, shape, ours: list[dict], original: list[dict], agree: dict) -> dict:
    """Medians of each side and the ratios the doc reports."""
    row = {"mode": mode, "shape": list(shape), "repeats": len(ours), "agreement": agree}
    for side, runs in (("ours", ours), ("original", original)):
        summary = {}
        for key in ("wall_s", "pipeline_s", "forward_s", "forward_in_run_s", "warm_pipeline_s"):
            summary[key] = _median(runs, key)
        summary["peak_rss_gb"] = _median(runs, "process_peak_rss_gb")
        cold = [r["pipeline_s"] / r["forward_s"] for r in runs if r.get("forward_s")]
        warm = [r["warm_pipeline_s"] / r["forward_s"] for r in runs if r.get("warm_pipeline_s")]
        summary["cold_ratio"] = statistics.median(cold) if cold else None
        summary["warm_ratio"] = statistics.median(warm) if warm else None
        summary["runs"] = runs
        row[side] = summary
    row["speedup_wall"] = row["original"]["wall_s"] / row["ours"]["wall_s"]
    return row


def markdown(result: dict) -> str:
    """The docs/benchmarks.md table of a ``--json`` result."""

    def f(value, fmt="{:.1f}"):
        return "-" if value is None else fmt.format(value)

    header = [
        "mode",
        "volume",
        "1.2.4 wall (s)",
        "this wall (s)",
        "speed-up",
        "peak RSS 1.2.4 / this (GB)",
        "pipeline/forward cold: 1.2.4 / this",
        "warm: 1.2.4 / this",
        "foreground voxels differing",
        "same partition",
    ]
    rows = []
    for r in result["rows"]:
        o, t, a = r["original"], r["ours"], r["agreement"]
        rows.append(
            [
                r["mode"],
                " x ".join(map(str, r["shape"])),
                f(o["wall_s"]),
                f(t["wall_s"]),
                f"**{r['speedup_wall']:.1f}x**",
                f"{f(o['peak_rss_gb'], '{:.2f}')} / {f(t['peak_rss_gb'], '{:.2f}')}",
                f"{f(o['cold_ratio'], '{:.2f}')} / {f(t['cold_ratio'], '{:.2f}')}",
                f"{f(o['warm_ratio'], '{:.2f}')} / {f(t['warm_ratio'], '{:.2f}')}",
                f"{a['foreground_differ']:,} of {a['foreground_voxels']:,}",
                "yes" if a["same_partition"] else "no",
            ]
        )
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    """Run both sides interleaved per mode and repetition; print and optionally save JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv with 1.2.4")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding raw.tif")
    p.add_argument("--raw", type=Path, help="a raw tif to crop from instead of --data/raw.tif")
    p.add_argument("--modes", default="2d,stack,ortho")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warm", action="store_true", help="also time a second (warm) pipeline run")
    for mode, crop in CROPS.items():
        p.add_argument(f"--{mode}-crop", default=crop, help=f"z0:z1,y0:y1,x0:x1 ({crop})")
    p.add_argument("--work", type=Path, help="folder for inputs and outputs (default: temp)")
    p.add_argument("--device", default="cpu", help="cpu only for now")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    python = original_python(args.venv)
    if python is None:
        p.error(f"no empanada-napari 1.2.4 in {args.venv}: bash scripts/setup_original_venv.sh")
    work = args.work or Path(tempfile.mkdtemp(prefix="empanada-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    config = original_config(work)
    raw = args.raw or args.data / "raw.tif"
    home = work / "home"
    home.mkdir(exist_ok=True)
    rows = []
    for mode in args.modes.split(","):
        image = work / f"{mode}.tif"
        shape = write_crop(raw, getattr(args, f"{mode}_crop"), image)
        ours, original, agree = [], [], None
        for rep in range(args.repeats):
            # Alternate which side goes first so that neither always runs after the other.
            sides = ("ours", "original") if rep % 2 == 0 else ("original", "ours")
            for side in sides:
                timing = work / f"{mode}_{side}_{rep}.json"
                if side == "ours":
                    out = work / f"{mode}_ours.tif"
                    ours.append(run_ours(mode, image, out, timing, args.warm))
                else:
                    out = work / f"{mode}_original.npy"
                    original.append(
                        run_original(python, mode, image, out, timing, config, home, args.warm)
                    )
                last = ours[-1] if side == "ours" else original[-1]
                print(f"[{mode} {rep}] {side}: {json.dumps(last)}", flush=True)
            if agree is None:
                agree = agreement(work / f"{mode}_ours.tif", work / f"{mode}_original.npy")
                print(f"[{mode}] agreement: {json.dumps(agree)}", flush=True)
        rows.append(summarise(mode, shape, ours, original, agree))
    print(markdown({"rows": rows}))
    if args.json:
        meta = {"raw": str(raw), "venv": str(args.venv), "device": args.device}
        write_result(args.json, "compare_original", argv, {"meta": meta, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
