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
    assert len(table) == len(names) and all(row[3] for row in table)  # descriptions shown
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
    assert ["ToyNet", "user", "on disk", "toy test model"] in manager.table.data.to_list()
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


def _click_row(qtbot, manager, row):
    from qtpy.QtCore import Qt

    native = manager.table.native
    rect = native.visualItemRect(native.item(row, 0))
    qtbot.mouseClick(native.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_row_click_selects_and_width_leaves_the_canvas(make_napari_viewer, qtbot):
    from empanada_napari.widgets.model_manager import MAX_MIN_WIDTH

    viewer = make_napari_viewer()
    _, manager = viewer.window.add_plugin_dock_widget(PLUGIN, "Model Manager")
    names = [row["name"] for row in manager.rows()]
    row = names.index("MitoNet_v1_mini")
    _click_row(qtbot, manager, row)
    assert manager.selected.value == "MitoNet_v1_mini"
    assert manager.download_button.enabled and "MB" in manager.download_button.text
    assert manager.table.data.to_list()[row][2].startswith("download")
    manager.selected.value = "Lucchi_Lite_v1"  # and the table follows the picker
    assert {i.row() for i in manager.table.native.selectedIndexes()} == {
        names.index("Lucchi_Lite_v1")
    }
    assert not manager.download_button.enabled  # bundled: on disk
    # A long message in the dock wraps instead of widening it.
    manager.jobs.status.value = "word " * 200
    manager.details.value = "word " * 200
    assert manager.native.minimumSizeHint().width() <= MAX_MIN_WIDTH


def test_import_asks_for_a_new_name_when_taken(make_napari_viewer, qtbot, tmp_path, toy_model_file):
    viewer = make_napari_viewer()
    _, manager = viewer.window.add_plugin_dock_widget(PLUGIN, "Model Manager")
    _, w2d = viewer.window.add_plugin_dock_widget(PLUGIN, "2D Inference (Parameter Testing)")
    manager.registry.register("ToyNet", write_config(tmp_path, toy_model_file))
    archive = manager.registry.export_archive("ToyNet", tmp_path / "toy.empanada")
    manager.archive.value = archive
    manager.import_button.clicked()
    assert not manager.jobs.busy  # nothing started: the name is taken
    assert manager.import_name.value == "ToyNet_2"
    assert "exists" in manager.jobs.status.value and "ToyNet_2" in manager.jobs.status.value
    manager.import_name.value = "ToyCopy"
    manager.import_button.clicked()
    wait_done(qtbot, manager)
    assert "ToyCopy" in manager.registry.names() and "ToyCopy" in w2d.model.choices
    assert manager.selected.value == "ToyCopy" and manager.import_name.value == ""


def test_download_button_fetches_with_progress(make_napari_viewer, qtbot, server, toy_model_file):
    import socket

    viewer = make_napari_viewer()
    _, manager = viewer.window.add_plugin_dock_widget(PLUGIN, "Model Manager")
    (server.root / "toy.pth").write_bytes(toy_model_file.read_bytes())
    config = {"model": server.url("toy.pth"), "norms": {"mean": 0.5, "std": 0.1}}
    manager.registry.register("Remote", dict(config, model_size_mb=1))
    manager.selected.value = "Remote"
    assert manager.download_button.enabled and manager.download_button.text == "Download (~1 MB)"
    manager.download_button.clicked()
    wait_done(qtbot, manager)
    assert manager.jobs.status.value == "Downloaded Remote."
    progress = manager.jobs.progress
    assert progress.max > 1 and progress.value == progress.max  # kB of the download
    row = [r for r in manager.table.data.to_list() if r[0] == "Remote"][0]
    assert row[2] == "on disk" and not manager.download_button.enabled

    # Offline: one readable sentence with the size and where to put the file.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    offline = dict(config, model=f"https://127.0.0.1:{port}/big.pth", model_size_mb=221)
    manager.registry.register("Offline", offline)
    manager.selected.value = "Offline"
    manager.download_button.clicked()
    wait_done(qtbot, manager)
    status = manager.jobs.status.value
    assert "no connection" in status and "about 221 MB" in status
    assert str(manager.registry.models_dir) in status and "\n" not in status


def test_download_can_be_cancelled(make_napari_viewer, qtbot, server):
    viewer = make_napari_viewer()
    _, manager = viewer.window.add_plugin_dock_widget(PLUGIN, "Model Manager")
    # 1000 bytes sent one at a time every 50 ms: still running when Cancel is pressed.
    config = {"model": server.url("drip"), "norms": {"mean": 0.5, "std": 0.1}}
    manager.registry.register("Slow", config)
    manager.selected.value = "Slow"
    manager.download_button.clicked()
    qtbot.waitUntil(lambda: server.gets["drip"] == 1, timeout=30_000)
    manager.jobs.cancel_button.clicked()
    wait_done(qtbot, manager)
    assert manager.jobs.status.value == "Cancelled."
    assert not [p for p in manager.registry.models_dir.glob("*") if p.is_file()]
    assert manager.registry.file_status("Slow") == "download"
