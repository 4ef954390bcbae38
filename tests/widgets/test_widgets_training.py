"""The adaptation loop in napari, headless: pick, correct, save, finetune, use (pytest-qt).

Runs on the real CDeep3M crop (tests/data) with the bundled model, tiny patches and a few
iterations so that it stays quick on a CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

DATA = Path(__file__).parents[1] / "data"
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
    patches, labels = [la for la in viewer.layers if META in la.metadata][-2:]  # the newest
    assert patches.data.shape == labels.data.shape == (2, 64, 64)
    assert labels.metadata[META]["patches"][0]["start"] == [1, 28, 28]
    np.testing.assert_array_equal(patches.data[0], raw[1, 28:92, 28:92])
    _pick(qtbot, pick, "random")
    _pick(qtbot, pick, "most uncertain (model's doubt)")
    patches, labels = [la for la in viewer.layers if META in la.metadata][-2:]  # the newest
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
    assert rc.name.value == "tuned_2"  # the next round is proposed a free name
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
    shapes, labels = viewer.layers["raw picked places"], viewer.layers["raw patch labels"]
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
    # Was: "You changed 27 of 19 objects" mixed deleted objects into a count of the
    # corrected ones; the corrections are now said against the model's proposal.
    said = save.jobs.status.value
    found = re.search(
        r"(\d+) objects corrected \((\d+) added, (\d+) deleted, (\d+) redrawn, (\d+) merged, "
        r"(\d+) split\); of the model's (\d+) objects (\d+) were kept as proposed; (\d+) "
        r"objects after correcting\.",
        said,
    )
    assert found, said
    changed, *kinds, proposed, kept, objects = (int(v) for v in found.groups())
    proposal = labels.metadata["empanada_patches"]["proposal"]
    assert changed == sum(kinds) >= 1 and kinds[0] >= 1 and kept <= proposed
    assert proposed == sum(len(np.unique(p)) - 1 for p in proposal)
    assert objects == sum(len(np.unique(p)) - 1 for p in edited)
    rows = read_manifest(tmp_path / "ds")
    assert [r["round"] for r in rows] == ["1", "1", "1"] and int(rows[0]["added"]) >= 1
    tune = open_widget(viewer, "Finetune Model")
    tune.run_controls.dataset.value = tmp_path / "ds"
    assert "3 patches, round 1" in tune.run_controls.loop.value
    # The next round never picks the same place again.
    pick.skip_saved.value = tmp_path / "ds"
    _pick(qtbot, pick, "random", count=3)
    again = [la for la in viewer.layers if "empanada_patches" in la.metadata][-1]
    again = again.metadata["empanada_patches"]["patches"]
    first = {tuple(i["start"]) for i in infos}
    for info in again:
        y, x = info["start"][1:]
        assert all(abs(y - a[1]) >= 64 or abs(x - a[2]) >= 64 for a in first), (again, infos)


def test_patches_in_context_keep_the_viewer_on_the_source_slice(make_napari_viewer, qtbot, raw):
    # Was: going to patch 5 moved the patch stack along z (slider "5/7" on slice 1);
    # deleting the patch layers then left the viewer on slice 3, and another slice showed
    # another patch at patch 5's place, where edits went to that other patch.
    stack = np.concatenate([raw, raw])  # 4 slices
    viewer = make_napari_viewer()
    image = viewer.add_image(stack, name="raw")
    pick = open_widget(viewer, "Pick Training Patches")
    pick.image.value = image
    viewer.dims.set_current_step(0, 1)
    pick.current_slice.value = True
    pick.prefill.value = "empty"
    _pick(qtbot, pick, "random", count=6)
    patches, labels = viewer.layers["raw patches"], viewer.layers["raw patch labels"]
    places = viewer.layers["raw picked places"]
    # The outlines and numbers are drawn above the patch layers, not hidden under them.
    assert viewer.layers.index(places) > viewer.layers.index(labels) > viewer.layers.index(image)
    for _ in range(5):
        pick.navigator.next.clicked()
    assert pick.navigator.current == 5
    qtbot.wait(50)
    # The slider keeps the source's 4 slices and reads the slice shown.
    assert tuple(viewer.dims.range[0])[:2] == (0, 3)
    assert viewer.dims.current_step[0] == 1 and viewer.dims.point[0] == 1
    assert patches.visible and labels.visible and labels.editable
    infos = labels.metadata["empanada_patches"]["patches"]
    assert tuple(labels.translate)[1:] == tuple(infos[5]["start"][1:])
    # On another slice no patch lies over the source, and none can be painted.
    viewer.dims.set_current_step(0, 2)
    qtbot.wait(50)
    assert not patches.visible and not labels.visible and not labels.editable
    assert places.visible
    viewer.dims.set_current_step(0, 1)  # back on patch 5's slice: patch 5 again
    assert patches.visible and labels.visible and labels.editable
    assert pick.navigator.current == 5
    # Deleting the patch layers leaves the viewer on the slice it showed.
    viewer.layers.remove(patches)
    viewer.layers.remove(labels)
    qtbot.wait(50)
    assert viewer.dims.point[0] == 1 and viewer.dims.current_step[0] == 1
    assert not pick.navigator.panel.isVisibleTo(pick.native)
    # ... so "current slice only" picks from the slice on screen.
    _pick(qtbot, pick, "random", count=2)
    again = [la for la in viewer.layers if "empanada_patches" in la.metadata][-1]
    again = again.metadata["empanada_patches"]["patches"]
    assert [i["start"][0] for i in again] == [1, 1]


def test_over_a_2d_image_the_slider_goes_from_patch_to_patch(make_napari_viewer, qtbot, raw):
    viewer = make_napari_viewer()
    image = viewer.add_image(raw[0], name="raw")
    pick = open_widget(viewer, "Pick Training Patches")
    pick.image.value = image
    pick.prefill.value = "empty"
    _pick(qtbot, pick, "random", count=3)
    labels = viewer.layers["raw patch labels"]
    infos = labels.metadata["empanada_patches"]["patches"]
    assert viewer.dims.current_step[0] == 0 and pick.navigator.current == 0
    viewer.dims.set_current_step(0, 2)  # the slider reads the patch number
    qtbot.wait(50)
    assert pick.navigator.current == 2 and viewer.dims.current_step[0] == 2
    assert tuple(labels.translate)[1:] == tuple(infos[2]["start"]) and labels.visible
    assert viewer.dims.point[0] == 0  # patch 2 lies on the image, where it was cut


def test_the_round_line_uses_the_docks_width(make_napari_viewer, qtbot, raw, tmp_path):
    # Was: the line saying the dataset's round wrapped into a 120-pixel column, 6 lines.
    from empanada_napari.core.training import save_patches

    images = [raw[0, :64, 64 * i : 64 * i + 64] for i in range(3)]
    masks = [(im < np.median(im)).astype(np.int32) for im in images]
    infos = [{"source": "raw", "axis": 0, "start": [0, 0, 64 * i], "stop": [1, 64, 64 * i + 64]}
             for i in range(3)]  # fmt: skip
    efforts = [{"objects": 1, "added": 1, "deleted": 0, "redrawn": 0, "merged": 0, "split": 0}]
    save_patches(tmp_path / "ds", images, masks, source="raw", infos=infos, efforts=efforts * 3)
    viewer = make_napari_viewer(show=True)
    tune = open_widget(viewer, "Finetune Model")
    tune.run_controls.dataset.value = tmp_path / "ds"
    line, name = tune.run_controls.loop, tune.run_controls.name
    assert "round 1 of the loop" in line.value and len(line.value) > 60
    qtbot.waitUntil(line.native.isVisible, timeout=5000)
    qtbot.wait(100)  # laid out
    assert line.native.width() >= name.native.width(), (line.native.width(), name.native.width())
    lines = line.native.height() / line.native.fontMetrics().lineSpacing()
    assert lines < 3.5, (line.native.width(), line.native.height())


def test_a_registered_name_is_never_replaced_silently(make_napari_viewer, tmp_path):
    # Was: Finetune registered over a model of the same name, the start model included.
    from empanada_napari.core.models.registry import get_registry

    registry = get_registry()
    mitonet = registry.builtin_dir / "MitoNet_v1.yaml"  # a download link: nothing fetched
    for name in ("CDeep3M_round1", "CDeep3M_round1_finetuned"):
        registry.register(name, mitonet)
    (tmp_path / "ds").mkdir()
    viewer = make_napari_viewer()
    tune = open_widget(viewer, "Finetune Model")
    rc = tune.run_controls
    rc.dataset.value = tmp_path / "ds"
    tune.model.value = "CDeep3M_round1"  # the proposed name follows, and is free
    assert rc.name.value == "CDeep3M_round1_finetuned_2"
    rc.name.value = "CDeep3M_round1"  # the start model's own name
    reason = tune.jobs.reason.value
    assert not tune.jobs.run_button.enabled
    assert "already registered" in reason and "'new model name'" in reason, reason
    assert "'CDeep3M_round2'" in reason and "'replace a model of the same name'" in reason
    rc.overwrite.value = True  # asked for: allowed
    assert tune.jobs.run_button.enabled, tune.jobs.reason.value
    rc.name.value = "Lucchi_Lite_v1"  # a built-in model is never replaced
    assert not tune.jobs.run_button.enabled and "built-in" in tune.jobs.reason.value
    # After a run the dock proposes the next free name and asks again before replacing.
    rc.name.value = "CDeep3M_round1"
    rc.after_run("CDeep3M_round1")
    assert rc.name.value == "CDeep3M_round2" and not rc.overwrite.value
    train = open_widget(viewer, "Train Model")  # the same rule
    train.run_controls.dataset.value = tmp_path / "ds"
    train.run_controls.name.value = "CDeep3M_round1"
    assert "already registered" in train.jobs.reason.value


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
    from empanada_napari.core.train_settings import FINETUNE, TRAIN
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
