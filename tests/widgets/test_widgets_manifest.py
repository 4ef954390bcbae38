"""The napari manifest, the widget modules' import cost and the package metadata agree."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "src" / "empanada_napari" / "napari.yaml"
WIDGETS = {
    "2D Inference (Parameter Testing)",
    "3D Inference",
    "Model Manager",
    "Export Segmentations",
    "Pick Training Patches",
    "Save Training Patches",
    "Finetune Model",
    "Train Model",
}
WIDGET_MODULES = [
    "inference_2d",
    "inference_3d",
    "model_manager",
    "export",
    "_io",
    "pick_patches",
    "save_patches",
    "finetune",
    "train",
]


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def test_manifest_validates_with_npe2():
    npe2 = pytest.importorskip("npe2")
    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == "empanada-napari"
    assert {w.display_name for w in pm.contributions.widgets} >= WIDGETS


def test_every_command_imports_and_is_callable():
    contributions = manifest()["contributions"]
    commands = {c["id"]: c for c in contributions["commands"]}
    for kind in ("widgets", "readers", "writers", "sample_data"):
        for item in contributions.get(kind, []):
            assert item["command"] in commands, item
    for command in commands.values():
        module, name = command["python_name"].split(":")
        assert callable(getattr(importlib.import_module(module), name)), command


@pytest.mark.parametrize("module", WIDGET_MODULES)
def test_widget_modules_do_not_import_torch(module):
    code = f"import sys; import empanada_napari.widgets.{module}; print('torch' in sys.modules)"
    env_path = str(ROOT / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin", "QT_QPA_PLATFORM": "offscreen"},
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_package_metadata_for_the_napari_hub():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "Framework :: napari" in project["classifiers"]
    entry = project["entry-points"]["napari.manifest"]["empanada-napari"]
    assert entry == "empanada_napari:napari.yaml"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]["empanada_napari"]
    assert "napari.yaml" in patterns and "data/*.tif" in patterns
    assert any(p.endswith("*.pth") for p in patterns)
    description = ROOT / ".napari-hub" / "DESCRIPTION.md"
    assert description.is_file()
    text = description.read_text()
    for name in WIDGETS:
        assert name in text
