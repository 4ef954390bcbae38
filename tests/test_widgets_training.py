"""The adaptation loop in napari, headless: pick, correct, save, finetune, use (pytest-qt).

Runs on the real CDeep3M crop (tests/data) with the bundled model, tiny patches and a few
iterations so that it stays quick on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

DATA = Path(__file__).parent / "data"
PLUGIN = "empanada-napari"


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_done(qtbot, widget, timeout=1_800_000):  # generous: CI machines may be loaded
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=timeout)


@pytest.fixture(scope="module")
def raw():
    return tifffile.imread(DATA / "cdeep3m_val_crop_raw.tif")


def _pick(qtbot, widget, strategy, count=2):
    widget.strategy.value = strategy
    widget.number.value = count
    widget.patch_size.value = 64
    assert widget.jobs.run_button.enabled, widget.jobs.reason.value
    widget.jobs.run_button.clicked()
    wait_done(qtbot, widget)


def test_adaptation_loop_selects_the_new_model_everywhere(make_napari_viewer, qtbot, raw, tmp_path):
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.widgets.pick_patches import META

    viewer = make_napari_viewer()
    image = viewer.add_image(raw, name="raw")
    w2d = open_widget(viewer, "2D Inference (Parameter Testing)")  # open before finetuning
    manager = open_widget(viewer, "Model Manager")
    old = w2d.model.value
    assert old == "Lucchi_Lite_v1"

    pick = open_widget(viewer, "Pick Training Patches")
    assert pick.image.value is image
    viewer.add_points(np.array([[1, 60, 60], [0, 200, 200]]), name="here")
    pick.image.value = image
    _pick(qtbot, pick, "at points (Points layer)")
    patches, labels = viewer.layers[-2], viewer.layers[-1]
    assert patches.data.shape == labels.data.shape == (2, 64, 64)
    assert labels.metadata[META]["patches"][0]["start"] == [1, 28, 28]
    np.testing.assert_array_equal(patches.data[0], raw[1, 28:92, 28:92])
    _pick(qtbot, pick, "random")
    _pick(qtbot, pick, "most uncertain (model's doubt)")
    patches, labels = viewer.layers[-2], viewer.layers[-1]
    info = labels.metadata[META]
    assert info["prefilled_by"] == old and info["patches"][0]["doubt"] > 0
    assert labels.data.max() > 0  # prefilled with the model's prediction

    # A correction: paint a new object into the first patch.
    edited = labels.data.copy()
    edited[0, 5:15, 5:15] = edited.max() + 1
    labels.data = edited

    save = open_widget(viewer, "Save Training Patches")
    assert save.patches.value is patches and save.labels_layer.value is labels
    save.folder.value = tmp_path / "dataset"
    save.keep_empty.value = True
    for expected in (2, 4):  # a second save appends
        save.jobs.run_button.clicked()
        wait_done(qtbot, save)
        assert f"({expected} in the dataset now)" in save.jobs.status.value
    masks = sorted((tmp_path / "dataset" / "raw" / "masks").glob("*.tiff"))
    assert [m.name for m in masks] == [f"raw_000{i}.tiff" for i in range(4)]
    np.testing.assert_array_equal(tifffile.imread(masks[0]), edited[0])
    assert tifffile.imread(masks[0]).dtype == np.int32

    tune = open_widget(viewer, "Finetune Model")
    rc = tune.run_controls
    rc.dataset.value = tmp_path / "dataset"
    rc.name.value = "tuned"
    rc.iterations.value = 4
    rc.patch_size.value = 64
    rc.batch.value = 2
    rc.lr.value = 0.005
    rc.val_fraction.value = 0.25
    rc.val_every.value = 2
    assert tune.jobs.run_button.enabled, tune.jobs.reason.value
    tune.jobs.run_button.clicked()
    wait_done(qtbot, tune)
    assert "Saved model 'tuned'" in tune.jobs.status.value, tune.jobs.status.value
    assert tune.plot.its == [1, 2, 3, 4] and len(tune.plot.f1) == 2
    qtbot.waitUntil(lambda: w2d.model.value == "tuned", timeout=5000)
    assert manager.selected.value == "tuned"

    # The open 2D dock now segments with the new model, and the result changed.
    w2d.image.value = image
    viewer.dims.set_current_step(0, 1)
    w2d.jobs.run_button.clicked()
    wait_done(qtbot, w2d)
    new_labels = viewer.layers[-1].data
    assert new_labels.shape == (1, *raw.shape[1:])  # the 2D result sits on its slice
    new_labels = new_labels[0]
    np.testing.assert_array_equal(new_labels, Engine2D("tuned", "cpu").segment(raw[1]))
    old_labels = Engine2D(old, "cpu").segment(raw[1])
    assert not np.array_equal(new_labels > 0, old_labels > 0)


def test_cancel_keeps_the_validated_model_but_not_as_the_next_start(
    make_napari_viewer, qtbot, raw, tmp_path
):
    from empanada_napari.core.models.loading import load_model
    from empanada_napari.core.training import save_patches

    corners = ((0, 0, 0), (1, 64, 64), (0, 0, 64), (1, 128, 0))
    images = [raw[z, y : y + 64, x : x + 64] for z, y, x in corners]
    masks = [(im < np.median(im)).astype(np.int32) for im in images]
    save_patches(tmp_path / "ds", images, masks)
    viewer = make_napari_viewer()
    w2d = open_widget(viewer, "2D Inference (Parameter Testing)")
    tune = open_widget(viewer, "Finetune Model")
    start = tune.model.value
    rc = tune.run_controls
    rc.dataset.value = tmp_path / "ds"
    rc.name.value = "stopped"
    rc.iterations.value = 500
    rc.patch_size.value = 64
    rc.batch.value = 2
    rc.val_fraction.value = 0.25  # one of the four patches (up to a third for objects)
    rc.val_every.value = 1
    height = tune.jobs.run_button.native.height()
    tune.jobs.run_button.clicked()
    qtbot.waitUntil(lambda: len(tune.plot.f1) >= 2, timeout=300_000)
    assert tune.jobs.run_button.native.height() == height  # fixed-size buttons
    tune.jobs.cancel_button.clicked()
    wait_done(qtbot, tune)
    status = tune.jobs.status.value
    assert "kept the best validated weights as model 'stopped_cancelled'" in status, status
    qtbot.waitUntil(lambda: w2d.model.value == "stopped_cancelled", timeout=5000)
    assert load_model("stopped_cancelled", "cpu").module is not None
    # Issue 37: the next finetune still starts from the model the user chose.
    assert tune.model.value == start


def test_bad_dataset_is_explained_in_the_dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from empanada_napari.widgets import _common

    errors: list[str] = []
    monkeypatch.setattr(_common, "show_error", errors.append)
    one = tmp_path / "one" / "s"
    (one / "images").mkdir(parents=True)
    (one / "masks").mkdir()
    tifffile.imwrite(one / "images" / "a.tiff", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(one / "masks" / "a.tiff", np.ones((32, 32), np.float32))
    viewer = make_napari_viewer()
    tune = open_widget(viewer, "Finetune Model")
    assert "Choose a dataset folder" in tune.jobs.reason.value
    tune.run_controls.dataset.value = tmp_path / "one"
    tune.jobs.run_button.clicked()
    wait_done(qtbot, tune)
    assert "needs at least 2" in tune.jobs.status.value  # the failure, kept beside Run
    assert errors and len(errors[-1]) <= 100  # a notification napari shows whole


@pytest.mark.parametrize(
    "name",
    ["Pick Training Patches", "Save Training Patches", "Finetune Model", "Train Model"],
)
def test_docks_scroll_and_fit_a_laptop_screen(make_napari_viewer, name):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    widget = open_widget(viewer, name)
    assert widget.native.findChild(QScrollArea) is not None
    assert not widget.advanced_section.isExpanded()
    # Everything but the scrolled content fits the 768 px of a 1366x768 laptop.
    assert widget.native.minimumSizeHint().height() < 700
    assert widget.native.minimumSizeHint().width() <= 450


def test_patches_in_context_effort_counted_and_a_second_round_elsewhere(
    make_napari_viewer, qtbot, raw, tmp_path
):
    from empanada_napari.core.training import read_manifest

    viewer = make_napari_viewer()
    image = viewer.add_image(raw, name="raw")
    pick = open_widget(viewer, "Pick Training Patches")
    pick.image.value = image
    viewer.dims.set_current_step(0, 1)
    pick.current_slice.value = True  # issue 37: pick from the slice on screen only
    _pick(qtbot, pick, "random", count=3)
    shapes, labels = viewer.layers["raw picked places"], viewer.layers[-1]
    infos = labels.metadata["empanada_patches"]["patches"]
    assert [i["start"][0] for i in infos] == [1, 1, 1]
    assert len(shapes.data) == 3  # the places, drawn on the source image
    assert pick.navigator.table.rowCount() == 3
    pick.navigator.go_to(2)  # patch 2 is shown where it was cut, with its labels on top
    y0, x0 = infos[2]["start"][1:]
    assert tuple(labels.translate) == (1 - 2, y0, x0)
    assert viewer.dims.point[0] == 1
    # A correction: one object added to patch 0 (painted where the prefill had none).
    edited = np.asarray(labels.data).copy()
    edited[0, 2:10, 2:10] = edited.max() + 1
    labels.data = edited
    save = open_widget(viewer, "Save Training Patches")
    save.folder.value = tmp_path / "ds"
    save.keep_empty.value = True
    save.jobs.run_button.clicked()
    wait_done(qtbot, save)
    assert "You changed" in save.jobs.status.value, save.jobs.status.value
    rows = read_manifest(tmp_path / "ds")
    assert [r["round"] for r in rows] == ["1", "1", "1"] and int(rows[0]["added"]) >= 1
    tune = open_widget(viewer, "Finetune Model")
    tune.run_controls.dataset.value = tmp_path / "ds"
    assert "3 patches, round 1" in tune.run_controls.loop.value
    # The next round never picks the same place again.
    pick.skip_saved.value = tmp_path / "ds"
    _pick(qtbot, pick, "random", count=3)
    again = viewer.layers[-1].metadata["empanada_patches"]["patches"]
    first = {tuple(i["start"]) for i in infos}
    for info in again:
        y, x = info["start"][1:]
        assert all(abs(y - a[1]) >= 64 or abs(x - a[2]) >= 64 for a in first), (again, infos)


def test_save_before_any_pick_says_pick_first(make_napari_viewer, qtbot, raw):
    viewer = make_napari_viewer()
    viewer.add_image(raw, name="raw")
    viewer.add_labels(np.zeros((1, *raw.shape[1:]), np.uint32), name="raw 2D z1")
    save = open_widget(viewer, "Save Training Patches")
    assert "Pick patches first" in save.jobs.reason.value


def test_the_docks_the_command_line_and_the_library_train_alike(make_napari_viewer, capsys):
    # Issue 34: three places used to hold three finetuning recipes (500 x 16 frozen on the
    # command line, 300 x 4 whole network in the dock).
    import argparse

    from empanada_napari import cli_training
    from empanada_napari.core.settings import FINETUNE, TRAIN
    from empanada_napari.widgets._training import UNFREEZE

    viewer = make_napari_viewer()
    tune, train = open_widget(viewer, "Finetune Model"), open_widget(viewer, "Train Model")
    mode, stages = UNFREEZE[tune.unfreeze.value]
    dock = tune.run_controls.train_settings(
        freeze_encoder=mode == "freeze", unfreeze=stages, tune=tune.tune.value
    )
    assert dock == FINETUNE
    assert train.run_controls.train_settings() == TRAIN
    parser = argparse.ArgumentParser()
    cli_training.add_training(parser.add_subparsers(dest="command"), "model")
    args = parser.parse_args(["finetune", "--data", "d", "--name", "n"])
    assert cli_training._settings(args, "finetune") == FINETUNE
    args = parser.parse_args(["train", "--data", "d", "--name", "n"])
    assert cli_training._settings(args, "train") == TRAIN
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--help"])
    shown = capsys.readouterr().out
    assert "Default: 300." in shown and "Default: 0.001." in shown and "Default: 4." in shown
    # A value outside a setting's bounds is refused by the setting itself, in the dock too.
    tune.run_controls.fields["val_fraction"].value = 0.5
    assert tune.run_controls.train_settings().val_fraction == 0.5
