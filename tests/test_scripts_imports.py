"""The scripts and benchmarks import only names the package still has.

They run rarely (training recipes take an hour, benchmarks need ../shared), so an API rename
could break them unnoticed: scripts/train_em_model.py imported a helper that had been renamed.
Every ``from empanada_napari... import name``, at any depth (most sit inside ``main``), must
resolve, and every module they import must load.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# original_driver.py runs inside the 1.2.4 venv and imports that package's own modules.
FILES = sorted(
    p
    for p in [*ROOT.glob("scripts/*.py"), *ROOT.glob("benchmarks/*.py")]
    if p.name != "original_driver.py"
)


def _package_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) for each name imported from empanada_napari in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("empanada_napari"):
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (alias.name, "", node.lineno)
                for alias in node.names
                if alias.name.startswith("empanada_napari")
            ]
    return sorted(found, key=lambda item: item[2])


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_package_name_a_script_imports_exists(path):
    missing = []
    for module, name, line in _package_imports(path):
        mod = importlib.import_module(module)
        if name and not hasattr(mod, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"line {line}: from {module} import {name}")
    assert not missing, f"{path.name} imports names the package no longer has: {missing}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "def main():\n    from empanada_napari.core.models.loading import _gone\n"
        "import empanada_napari.core.io\n"
    )
    assert _package_imports(script) == [
        ("empanada_napari.core.models.loading", "_gone", 2),
        ("empanada_napari.core.io", "", 3),
    ]
