"""The README's quick start and CI stay in step."""

from __future__ import annotations

import json
import re
from pathlib import Path
from shutil import which as shutil_which

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert "segment --sample" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = _quick_start_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def _source_copy(dest: Path) -> Path:
    """The files a fresh clone would have (tracked, plus new files not ignored), copied."""
    import shutil
    import subprocess

    res = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    for name in res.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.mark.slow
@pytest.mark.gui
def test_readme_first_command_in_a_new_venv(tmp_path):
    """The README's first command, verbatim, in a new venv on a copy of the sources.

    The venv sees this environment's packages (``--system-site-packages``) so that nothing is
    downloaded: this proves that the package builds from a clean tree, installs with its
    console script, bundled model, sample and napari manifest, that the ``[all]`` extra
    resolves, that the sample is segmented offline and the output opens in napari as labels
    with the plugin's widgets. Fetching torch and Qt from the index on a bare machine is not
    exercised here (README, "Installing torch").
    """
    import os
    import subprocess
    import sys

    import numpy as np
    import tifffile

    if shutil_which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy the sources from")
    src = _source_copy(tmp_path / "clone")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    first = _quick_start_commands()[0]
    res = subprocess.run(
        ["bash", "-c", first], cwd=src, env=env, capture_output=True, text=True, timeout=3600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["objects"] > summary["label_ids"] > 0  # per slice vs ids in the file
    # The command can be run twice: its own result is replaced.
    again = subprocess.run(
        ["bash", "-c", first.split("&&")[-1]], cwd=src, env=env, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    out = src / "mito_labels.tif"
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint32 and labels.shape == (16, 512, 512) and labels.max() > 0
    assert "open it with: napari" in res.stderr
    # The venv's own copy runs (not this checkout), and napari opens the result as labels
    # with the plugin's widgets: the README's "napari mito_labels.tif" works.
    check = (
        "import sys, empanada_napari, napari, qtpy\n"
        f"assert empanada_napari.__file__.startswith({str(venv)!r}), empanada_napari.__file__\n"
        "v = napari.Viewer(show=False)\n"
        f"layer = v.open({str(out)!r})[0]\n"
        "assert type(layer).__name__ == 'Labels', type(layer)\n"
        "v.window.add_plugin_dock_widget('empanada-napari', '3D Inference')\n"
        "print('napari', napari.__version__, 'qt', qtpy.API_NAME)\n"
        "v.close()\n"
    )
    res = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "napari" in res.stdout and "qt" in res.stdout


def test_readme_lists_the_system_packages_that_ci_installs():
    def packages(text: str) -> set[str]:
        joined = text.replace("\\\n", " ")  # shell line continuations
        line = re.search(r"apt-get install ([^\n]*)", joined).group(1)
        return {w for w in line.split() if not w.startswith(("-", ">"))}

    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "xvfb" in packages(ci) and packages(readme) == packages(ci)
