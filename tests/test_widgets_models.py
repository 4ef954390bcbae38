"""Model Manager widget: list, register, import/export, remove; pickers follow the registry."""

from __future__ import annotations

import pytest
import yaml

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "empanada-napari"


def wait_done(qtbot, widget, timeout=30_000):
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=timeout)


def write_config(folder, model_file, description="toy test model"):
    path = folder / "toy_config.yaml"
    config = {
        "description": description,
        "model": str(model_file),
        "padding_factor": 16,
        "norms": {"mean": 0.57571, "std": 0.12765},
        "labels": [1],
        "thing_list": [1],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_manager_lists_registers_and_pickers_refresh(
    make_napari_viewer, qtbot, tmp_path, toy_model_file
):
    viewer = make_napari_viewer()
    _, manager = viewer.window.add_plugin_dock_widget(PLUGIN, "Model Manager")
    _, w2d = viewer.window.add_plugin_dock_widget(PLUGIN, "2D Inference (Parameter Testing)")
    _, w3d = viewer.window.add_plugin_dock_widget(PLUGIN, "3D Inference")
    names = [row["name"] for row in manager.rows()]
    assert {"Lucchi_Lite_v1", "MitoNet_v1", "MitoNet_v1_mini"} <= set(names)
    table = manager.table.data.to_list()
    assert len(table) == len(names) and all(row[2] for row in table)  # descriptions shown
    assert manager.selected.value == "Lucchi_Lite_v1"
    assert not manager.remove_button.enabled  # built-in
    assert "ToyNet" not in w2d.model.choices

    manager.new_name.value = "ToyNet"
    manager.config.value = write_config(tmp_path, toy_model_file)
    manager.register_button.clicked()
    wait_done(qtbot, manager)
    for picker in (w2d.model, w3d.model, manager.selected):
        assert "ToyNet" in picker.choices
    assert w2d.model.value == "Lucchi_Lite_v1"  # a refresh keeps the user's choice
    assert ["ToyNet", "user", "toy test model"] in manager.table.data.to_list()
    assert manager.selected.value == "ToyNet" and manager.remove_button.enabled

    # Export, remove, import again.
    archive = tmp_path / "ToyNet.empanada"
    manager.export_path.value = archive
    manager.export_button.clicked()
    wait_done(qtbot, manager)
    assert archive.is_file()
    manager.remove_button.clicked()
    assert "ToyNet" not in w2d.model.choices and "ToyNet" not in w3d.model.choices
    manager.archive.value = archive
    manager.import_button.clicked()
    wait_done(qtbot, manager)
    assert "ToyNet" in w3d.model.choices
    assert manager.registry.get("ToyNet").description == "toy test model"


def test_manager_refuses_builtin_removal_and_bad_files(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from empanada_napari.widgets import _common

    errors: list[str] = []
    monkeypatch.setattr(_common, "show_error", errors.append)
    viewer = make_napari_viewer()
    _, manager = viewer.window.add_plugin_dock_widget(PLUGIN, "Model Manager")
    manager.remove_model()
    assert "built-in" in errors[-1]
    assert "Lucchi_Lite_v1" in manager.registry.names()
    # A config pointing at a file that is not TorchScript: the reason, no traceback.
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"<html>not a model</html>")
    manager.new_name.value = "Broken"
    manager.config.value = write_config(tmp_path, bad)
    manager.register_button.clicked()
    wait_done(qtbot, manager)
    assert "not a TorchScript archive" in errors[-1]
    assert "Broken" not in manager.selected.choices
    manager.archive.value = tmp_path / "missing.empanada"
    manager.import_archive()
    assert ".empanada" in errors[-1]
