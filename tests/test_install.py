"""Installing and running the test suite like a user: metadata, extras, docs, no-display runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    from packaging.requirements import Requirement

    return {Requirement(r).name.lower() for r in requirements} | {
        f"{Requirement(r).name.lower()}[{e}]" for r in requirements for e in Requirement(r).extras
    }


def test_version_sorts_after_the_original_plugin():
    from packaging.version import Version

    version = Version(_project()["version"])
    # pip install -U must never replace this project with empanada-napari 1.2.4.
    assert version > Version("1.2.4") and version.major >= 2


def test_all_extra_brings_a_qt_binding_and_plain_install_does_not():
    project = _project()
    bindings = {"pyqt5", "pyqt6", "pyside6", "pyside6-essentials", "pyside2"}
    extra = _names(project["optional-dependencies"]["all"])
    assert extra & (bindings | {"napari[all]", "napari[pyqt]", "napari[pyside]"})
    # napari's convention: no Qt binding forced on users who already have one.
    assert not _names(project["dependencies"]) & bindings


def test_distributed_comes_with_a_plain_install():
    # --workers / --scheduler and the 3D widget's scheduler need dask.distributed.
    names = _names(_project()["dependencies"])
    assert "distributed" in names or "dask[distributed]" in names
    import distributed  # noqa: F401 - installed with the package


def test_docs_do_not_send_users_to_the_old_package():
    """A bare ``pip install empanada-napari`` installs 1.2.4: only say it to warn about that."""
    bare = re.compile(r"pip install (-U )?empanada-napari(?![\w\[=<>.-])")
    pages = [ROOT / "README.md", ROOT / ".napari-hub" / "DESCRIPTION.md"]
    pages += sorted((ROOT / "docs").rglob("*.md"))
    offenders = []
    for page in pages:
        text = page.read_text()
        for paragraph in re.split(r"\n\s*\n", text):
            if bare.search(paragraph) and "1.2.4" not in paragraph:
                offenders.append(f"{page.relative_to(ROOT)}: {paragraph[:80]!r}")
    assert not offenders
    assert (ROOT / "docs" / "migrating.md").is_file()
    assert "docs/migrating.md" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"EMPANADA_NAPARI_NO_DISPLAY": "1"}, "EMPANADA_NAPARI_NO_DISPLAY is set"),
        ({"DISPLAY": None, "WAYLAND_DISPLAY": None, "QT_QPA_PLATFORM": None}, "Xvfb"),
    ],
)
def test_no_display_reason_names_the_cause_and_the_fix(monkeypatch, env, expected):
    from ._gui import no_display_reason

    if "DISPLAY" in env and not sys.platform.startswith("linux"):
        pytest.skip("DISPLAY only decides on Linux")
    monkeypatch.delenv("EMPANADA_NAPARI_NO_DISPLAY", raising=False)
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    reason = no_display_reason()
    assert reason and expected in reason and reason.startswith("GUI tests skipped")


@pytest.mark.slow
def test_gui_tests_skip_with_a_reason_instead_of_aborting():
    """Without a display, GUI tests are skipped with one reason; the others still run.

    Simulated with EMPANADA_NAPARI_NO_DISPLAY, DISPLAY unset and pytest-xvfb disabled: before,
    Qt aborted the whole run with SIGABRT (exit status 134) at the first viewer.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["EMPANADA_NAPARI_NO_DISPLAY"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xvfb", "-p", "no:cacheprovider"]
        + ["-q", "-rs", "-W", "ignore::DeprecationWarning", "tests/widgets/test_widgets_export.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert re.search(r"\b1 passed, 2 skipped\b", out), out[-3000:]
    assert "SKIPPED [2]" in out and "EMPANADA_NAPARI_NO_DISPLAY is set" in out
