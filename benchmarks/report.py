"""Run the benchmark figures and rewrite their blocks in docs/benchmarks.md (issue 7).

    python -m benchmarks.report [--only accuracy,model_speed,throughput,compare_original,...] \\
        [--quick] [--device auto] [--out runs/bench] [--doc docs/benchmarks.md] [--render-only]

Each figure runs in a fresh subprocess (``python -m benchmarks.<module> ... --json``), so the
memory figure measures its own process, and writes its JSON to ``--out``. Then the text between
``<!-- figure:NAME -->`` and ``<!-- /figure:NAME -->`` in the doc is replaced by a line giving
the command, date, commit and machine, and the figure's table; text outside the markers is
never touched. A figure that failed keeps its block and the script exits 1 naming it.
``--quick`` runs every figure on the small real crops in tests/data in seconds (to check the
machinery, not to publish); ``--render-only`` re-renders the blocks from the JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import ROOT


@dataclass(frozen=True)
class Figure:
    """How to produce one figure: its module and one argument string per run."""

    module: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    device: bool = False  # the script takes --device


# In doc order. ``{out}`` is the --out folder. The full runs are the documented commands (hours
# on 2 CPU cores); the quick ones use the crops in tests/data and take seconds each.
FIGURES: dict[str, Figure] = {
    "accuracy": Figure(
        "accuracy",
        full=(
            "--model default --data ../shared/data/lucchi_train --z 132,165 --modes 2d,stack",
            "--model default --data ../shared/data/lucchi_train --z 132,165 --modes 2d,stack"
            " --median-slices 7 --min-size 5000 --min-extent 8 --tta",
        ),
        quick=("--quick --modes 2d,stack",),
        device=True,
    ),
    "model_speed": Figure(
        "model_speed",
        full=("--size 1024 --repeats 2",),
        quick=("--size 64 --repeats 1 --archs panoptic_lite,bundled",),
        device=True,
    ),
    "throughput": Figure(
        "throughput",
        full=(
            "--sizes 16x512x512,16x768x1024 --batch-sizes 1,2 --ortho-sizes 64x256x256,128x384x384",
        ),
        quick=(
            "--raw tests/data/lucchi_crop_raw.tif --sizes 8x128x128 --batch-sizes 1 --repeats 1"
            " --ortho-sizes 16x64x64",
        ),
        device=True,
    ),
    "compare_original": Figure(
        "compare_original",
        full=("--data ../shared/data/lucchi_train --repeats 3 --warm",),
        quick=(
            "--raw tests/data/lucchi_crop_raw.tif --modes 2d --repeats 1 --2d-crop 0:2,0:128,0:128",
        ),
    ),
    "memory": Figure(
        "memory",
        full=("--sizes 256,512,1024 --big-gb 12.6 --downsample 2 --work runs/memory",),
        quick=(
            "--sizes 160 --downsample 4 --data tests/data/lucchi_crop_raw.tif --work {out}/memory",
        ),
    ),
    "proofread": Figure(
        "proofread",
        full=(
            "--shape 512x1024x1024 --objects 15 --naive-repeats 5",
            "--shape 512x1024x1024 --objects 15 --naive-repeats 3 --percentiles 95,100",
        ),
        quick=(
            "--labels tests/data/lucchi_crop_instances_3d_cc.tif --shape 32x640x640 --stride 1"
            " --objects 4 --naive-repeats 1",
            "--labels tests/data/lucchi_crop_instances_3d_cc.tif --shape 32x640x640 --stride 1"
            " --objects 4 --naive-repeats 1 --percentiles 95,100",
        ),
    ),
}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (the commands run from there)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def runs_of(figure: Figure, quick: bool) -> tuple[str, ...]:
    """The argument strings of a figure's runs in this mode."""
    return figure.quick if quick else figure.full


def json_paths(name: str, runs: int, out: Path) -> list[Path]:
    """The result files of a figure: ``NAME.json``, or ``NAME.1.json``... for several runs."""
    if runs == 1:
        return [out / f"{name}.json"]
    return [out / f"{name}.{i}.json" for i in range(1, runs + 1)]


def run_figure(name: str, figure: Figure, out: Path, quick: bool, device: str) -> bool:
    """Run every command of a figure, each in a fresh process; True if all wrote their JSON."""
    env = dict(os.environ)
    # The children must import this checkout's code, not another installed copy of the package.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    runs = runs_of(figure, quick)
    paths = json_paths(name, len(runs), out)
    for path in paths:  # a stale result must never be rendered as this run's
        path.unlink(missing_ok=True)
    for args, path in zip(runs, paths, strict=True):
        argv = shlex.split(args.format(out=_shown(out)))
        if figure.device:
            argv += ["--device", device]
        cmd = [sys.executable, "-m", f"benchmarks.{figure.module}", *argv]
        cmd += ["--json", _shown(path)]
        print(f"[{name}] {shlex.join(cmd)}", flush=True)
        done = subprocess.run(cmd, cwd=ROOT, env=env)
        if done.returncode != 0 or not path.exists():
            print(f"[{name}] failed (exit code {done.returncode})", file=sys.stderr, flush=True)
            return False
    return True


def header_line(results: list[dict]) -> str:
    """Command(s), date, commit and machine of a figure's results, as one markdown line."""
    meta = results[0]["meta"]
    commands = "; ".join(f"`{r['command']}`" for r in results)
    ram = f"{meta['ram_gb']:g} GB RAM" if meta.get("ram_gb") else "RAM unknown"
    return (
        f"Generated by {commands} on {meta['date']} at commit `{meta['commit']}`: "
        f"{meta['cores']} cores ({meta['cpu']}), {ram}, {meta.get('gpu') or 'no GPU'}, "
        f"torch {meta['torch']} ({meta['torch_threads']} threads)."
    )


def render(name: str, figure: Figure, out: Path, quick: bool) -> str:
    """The new content of a figure's block from its JSON files in ``out``."""
    paths = json_paths(name, len(runs_of(figure, quick)), out)
    results = [json.loads(p.read_text()) for p in paths]
    module = importlib.import_module(f"benchmarks.{figure.module}")
    table = module.markdown(results[0] if len(results) == 1 else results)
    # Blank line before the closing marker: a GFM table would otherwise swallow it as a row.
    return f"{header_line(results)}\n\n{table}\n\n"


def replace_block(doc: str, name: str, body: str) -> str:
    """``doc`` with the text between the markers of figure ``name`` replaced by ``body``."""
    tag = re.escape(name)
    pattern = re.compile(rf"(<!-- figure:{tag} -->\n)(.*?)(^<!-- /figure:{tag} -->)", re.S | re.M)
    new, count = pattern.subn(lambda m: m.group(1) + body + m.group(3), doc, count=1)
    if count == 0:
        raise KeyError(f"no <!-- figure:{name} --> ... <!-- /figure:{name} --> block")
    return new


def main(argv: list[str] | None = None) -> int:
    """Run (unless --render-only) and render the chosen figures; 1 if any failed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help=f"comma list among {','.join(FIGURES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny real crops from tests/data")
    p.add_argument("--device", default="auto", help="passed to the scripts that take it")
    p.add_argument("--out", type=Path, help="JSON folder (runs/bench, runs/bench/quick)")
    p.add_argument(
        "--doc",
        type=Path,
        help="blocks rewritten here (default docs/benchmarks.md; with --quick, none)",
    )
    p.add_argument("--render-only", action="store_true", help="render the JSON in --out only")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        p.error(f"unknown figures {unknown}; choose among {list(FIGURES)}")
    # Quick results go elsewhere so that they never overwrite hours of full-run JSON.
    out = args.out or ROOT / "runs" / "bench" / ("quick" if args.quick else "")
    if not args.render_only:
        out.mkdir(parents=True, exist_ok=True)

    if args.doc is None and not args.quick:
        args.doc = ROOT / "docs" / "benchmarks.md"
    # Quick numbers come from tiny crops: they go into a doc only when one is named.
    failed = []
    for name in names:
        figure = FIGURES[name]
        if not args.render_only and not run_figure(name, figure, out, args.quick, args.device):
            failed.append(name)
            continue
        if args.doc is None:
            continue
        try:
            # Read the doc afresh for each figure: runs take hours, and people edit the prose
            # meanwhile; only this figure's block changes.
            old = args.doc.read_text()
            new = replace_block(old, name, render(name, figure, out, args.quick))
        except (OSError, KeyError, ValueError, TypeError) as err:
            print(f"[{name}] not rendered: {err}", file=sys.stderr)
            failed.append(name)
            continue
        if new != old:
            args.doc.write_text(new)
        print(f"[{name}] rendered into {args.doc}", flush=True)
    if failed:
        print(f"failed figures: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
