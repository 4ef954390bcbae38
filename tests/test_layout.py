"""docs/design.md lists every module, and the layers it states hold (issue 34)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "empanada_napari"
DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def _imports(path: Path) -> set[str]:
    """Absolute names a module imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["empanada_napari", *path.relative_to(PACKAGE).parent.parts]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            out.add(name)
            out |= {f"{name}.{alias.name}" for alias in node.names}
    return out


def test_design_lists_every_module():
    text = DESIGN.read_text()
    missing = [str(p.relative_to(PACKAGE)) for p in _modules() if f"`{p.name}`" not in text]
    assert not missing, missing


def test_the_layers_hold():
    gui = ("napari", "qtpy", "magicgui", "superqt", "PySide6", "PyQt5", "PyQt6")
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        names = _imports(path)
        if rel.parts[0] == "core":
            bad = {n for n in names if n.split(".")[0] in gui or n.startswith(
                ("empanada_napari.widgets", "empanada_napari.cli"))}  # fmt: skip
            assert not bad, (rel, bad)
        if rel.parts[0] == "widgets":
            assert not {n for n in names if n.startswith("empanada_napari.cli")}, rel


def test_measuring_sits_below_inference():
    """Metrics and the object rules they share with the 3D drivers import no inference code:
    scoring a result never needs the engine (issue 34, "placed by what it imports")."""
    for name in ("metrics.py", "metrics_3d.py", "objects.py"):
        names = _imports(PACKAGE / "core" / name)
        assert not {n for n in names if n.startswith("empanada_napari.core.inference")}, name


MODELS = "empanada_napari.core.models"


def test_models_have_one_public_face():
    """Outside core/models, code imports from the package, never from its modules (issue 34):
    the registry, loading and the architectures can move without touching their users."""
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[:2] == ("core", "models"):
            continue
        names = {n.split(".")[3] for n in _imports(path) if n.startswith(MODELS + ".")}
        modules = {n for n in names if (PACKAGE / "core" / "models" / n).with_suffix(".py").exists()
                   or (PACKAGE / "core" / "models" / n).is_dir()}  # fmt: skip
        assert not modules, (rel, modules)


def test_tests_reach_napari_private_api_only_through_the_compat_module():
    """One place to fix when napari changes (issue 34): widgets/_napari_compat.py."""
    private = ("._undo_history", "._redo_history", "._save_history", "_MaskedPaintAtom",
               "._qt_window", "._qt_viewer")  # fmt: skip
    tests = Path(__file__).resolve().parent
    for path in sorted(tests.rglob("*.py")):
        if path.name == "test_layout.py":
            continue
        text = path.read_text(encoding="utf-8")
        found = [p for p in private if p in text]
        assert not found, (path.name, found)
