"""A biologist's first hour (issue 14): docks fit a laptop, buttons keep their size, the reason
Run is disabled is always on show and follows the viewer, Cancel means no result, progress
shows in napari's activity dock, tooltips everywhere, result layers say what made them."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
import tifffile

from empanada_napari.widgets._napari_compat import main_window

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

DATA = Path(__file__).parents[1] / "data"
PLUGIN = "empanada-napari"
LAPTOP = (1366, 768)


@pytest.fixture(scope="module")
def crop():
    return tifffile.imread(DATA / "lucchi_crop_raw.tif")[:4]


def shown(widget) -> bool:
    """Not hidden (magicgui's ``visible`` is False for any widget of an unshown window)."""
    return not widget.native.isHidden()


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def test_inference_docks_fit_a_laptop_screen_side_by_side(make_napari_viewer, qtbot, crop):
    viewer = make_napari_viewer(show=True)
    window = main_window(viewer)
    window.resize(*LAPTOP)
    viewer.add_image(crop, name="raw")
    docks = [open_widget(viewer, n) for n in ("2D Inference (Parameter Testing)", "3D Inference")]
    qtbot.wait(200)
    for widget in docks:
        # Everything scrolls: the dock asks for little height, and stays narrow.
        assert widget.scroll_area.widget() is widget.form.native
        assert widget.native.minimumSizeHint().height() < 300
        assert widget.native.minimumSizeHint().width() <= 400
        assert widget.advanced_section is not None
    # Opening 2D then 3D (tune in 2D, run in 3D) does not push the window off the screen.
    assert window.height() <= LAPTOP[1] and window.width() <= LAPTOP[0]


def test_every_setting_control_has_a_tooltip_with_its_default(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_widget(viewer, "3D Inference")
    for group in (widget.controls, widget.stack_controls, widget.ortho_controls):
        for name, control in group.items():
            assert "Default:" in (control.tooltip or ""), name


@pytest.mark.parametrize(
    "name", ["2D Inference (Parameter Testing)", "3D Inference", "Model Manager", "Merge Labels"]
)
def test_help_button_explains_the_dock_and_every_setting(make_napari_viewer, qtbot, name):
    viewer = make_napari_viewer()
    widget = open_widget(viewer, name)
    widget.help_button.click()
    box = widget.help_box
    text = box.text()
    intro = getattr(widget, "user_help", None) or type(widget).__doc__
    assert intro.split(":")[0].split(".")[0] in text  # what the dock does
    if name == "3D Inference":  # every setting, advanced ones too, with its default
        for control in widget.stack_controls.values():
            assert control.tooltip.split(".")[0] in text
        assert text.count("Default:") >= len(widget.stack_controls)
    box.close()


def test_reason_run_is_disabled_is_visible_and_follows_the_viewer(make_napari_viewer, qtbot,
                                                                    crop):  # fmt: skip
    viewer = make_napari_viewer()
    widget = open_widget(viewer, "2D Inference (Parameter Testing)")
    assert not widget.jobs.run_button.enabled
    assert shown(widget.jobs.reason) and "Image layer" in widget.jobs.reason.value
    viewer.add_image(crop, name="raw")
    assert widget.jobs.run_button.enabled and not shown(widget.jobs.reason)
    # The viewer's display changes: 3D view, then back, with no control touched.
    viewer.dims.ndisplay = 3
    assert not widget.jobs.run_button.enabled and "2D" in widget.jobs.reason.value
    viewer.dims.ndisplay = 2
    assert widget.jobs.run_button.enabled
    # An ROI drawn after choosing "shapes ROI" enables Run at once.
    shapes = viewer.add_shapes(name="roi")
    widget.region.value = "shapes ROI"
    widget.roi.value = shapes
    assert "no shapes" in widget.jobs.reason.value
    shapes.add([[[20, 20], [20, 120], [120, 120], [120, 20]]], shape_type="rectangle")
    assert widget.jobs.run_button.enabled, widget.jobs.reason.value


def test_buttons_keep_their_size_and_progress_reaches_the_activity_dock(
    make_napari_viewer, qtbot, monkeypatch, crop
):
    import napari.utils

    bars = []
    original = napari.utils.progress

    def recording(*args, **kwargs):
        bar = original(*args, **kwargs)
        bars.append(bar)
        return bar

    monkeypatch.setattr(napari.utils, "progress", recording)
    from empanada_napari.widgets import _jobs

    monkeypatch.setattr(_jobs, "ACTIVITY_AFTER_S", 0.0)  # this quick job shows there too
    viewer = make_napari_viewer(show=True)
    viewer.add_image(crop, name="raw")
    widget = open_widget(viewer, "2D Inference (Parameter Testing)")
    widget.region.value = "all slices (batch)"
    heights = [(widget.jobs.run_button.native.height(), widget.jobs.cancel_button.native.height())]
    widget.run()
    qtbot.wait(50)
    heights.append(
        (widget.jobs.run_button.native.height(), widget.jobs.cancel_button.native.height())
    )
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120_000)
    heights.append(
        (widget.jobs.run_button.native.height(), widget.jobs.cancel_button.native.height())
    )
    assert len(set(heights)) == 1 and heights[0][0] >= 20
    assert bars and bars[0].total in (0, 4) and bars[0].n == 4
    # The batch's message counts objects slice by slice (ids restart in every slice).
    from empanada_napari.core.inference.slices import count_objects

    expected = count_objects(viewer.layers[-1].data)
    assert f"{expected} objects" in widget.jobs.status.value


def test_cancel_of_a_single_slice_with_flip_averaging_adds_no_layer(make_napari_viewer, qtbot,
                                                                     crop):  # fmt: skip
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="raw")
    widget = open_widget(viewer, "2D Inference (Parameter Testing)")
    widget.tta.value = True
    widget.run()
    widget.jobs.cancel_button.clicked()  # at once: during the first of the four views
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120_000)
    assert widget.jobs.status.value == "Cancelled."
    assert [layer.name for layer in viewer.layers] == ["raw"]


def test_opening_a_dock_does_not_wait_for_torch(make_napari_viewer, qtbot, monkeypatch):
    """Finding the devices needs torch (seconds to import): it runs in a worker, the dock
    opens at once with auto/cpu and lists the GPUs when they are known."""
    import threading

    from empanada_napari.core import device
    from empanada_napari.widgets import _pickers

    release = threading.Event()

    def slow_devices():
        release.wait(30)
        return ["cuda:0", "cpu"]

    monkeypatch.setattr(device, "available_devices", slow_devices)
    monkeypatch.setattr(_pickers, "_DEVICES", [])
    viewer = make_napari_viewer()
    widget = open_widget(viewer, "3D Inference")  # returns while the devices are unknown
    assert list(widget.device.choices) == ["auto", "cpu"]
    release.set()
    qtbot.waitUntil(lambda: "cuda:0" in widget.device.choices, timeout=10_000)
    assert widget.device.value == "auto"


def test_only_jobs_that_run_long_show_in_the_activity_dock(qtbot, monkeypatch):
    # A quick click keeps to the dock's own bar (napari's animated activity indicator costs
    # CPU on software OpenGL); a job still running after ACTIVITY_AFTER_S shows there too.
    import threading

    import napari.utils

    from empanada_napari.widgets import _jobs

    bars = []
    original = napari.utils.progress
    monkeypatch.setattr(
        napari.utils, "progress", lambda *a, **k: bars.append(original(*a, **k)) or bars[-1]
    )
    monkeypatch.setattr(_jobs, "ACTIVITY_AFTER_S", 0.5)
    panel = _jobs.JobPanel("Run", lambda: None)
    panel.start(lambda progress, cancel: progress(1, 1), lambda _: "quick")
    qtbot.waitUntil(lambda: not panel.busy)
    assert bars == [] and panel.status.value == "quick"
    release = threading.Event()

    def slow(progress, cancel):
        progress(1, 2)
        release.wait(30)
        progress(2, 2)

    panel.start(slow, lambda _: "slow")
    qtbot.waitUntil(lambda: len(bars) == 1, timeout=5_000)
    assert bars[0].total == 2
    release.set()
    qtbot.waitUntil(lambda: not panel.busy)
    assert panel.status.value == "slow" and bars[0].n == 2


def _dock_names() -> list[str]:
    import yaml

    manifest = Path(__file__).parents[2] / "src" / "empanada_napari" / "napari.yaml"
    widgets = yaml.safe_load(manifest.read_text())["contributions"]["widgets"]
    return [w["display_name"] for w in widgets]


@pytest.mark.parametrize("name", _dock_names())
def test_every_control_has_a_tooltip_and_is_in_the_help(make_napari_viewer, name, monkeypatch):
    # Issue 37: Finetune's help listed none of its main settings.
    from magicgui.widgets import Label

    from empanada_napari.widgets._layout import _controls, help_text

    monkeypatch.setenv("EMPANADA_NAPARI_PRELOAD", "0")
    viewer = make_napari_viewer()
    widget = open_widget(viewer, name)
    parts = [widget.form, widget.jobs]
    parts += [widget.advanced_section._inner] if widget.advanced_section else []
    controls = [c for part in parts for c in _controls(list(part)) if not isinstance(c, Label)]
    missing = [c.label or c.name for c in controls if not (c.tooltip or "").strip()]
    assert not missing, missing
    page = help_text(widget, [widget.form, *(parts[1:])])
    for c in controls:
        label = str(getattr(c, "label", "") or getattr(c, "text", "") or "").strip()
        if label:
            assert f"<b>{html.escape(label, quote=False)}</b>" in page, label
    assert len(controls) >= 3


def test_the_loop_s_docks_open_as_tabs_on_a_laptop(make_napari_viewer, qtbot, crop):
    # Issue 37: stacked, the 2D dock and Pick, Save and Finetune got 100-250 px each on a
    # 1366 x 768 screen (Save's button half hidden, Finetune's plot cut).
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    window = main_window(viewer)
    window.resize(*LAPTOP)
    viewer.add_image(crop, name="raw")
    names = ("2D Inference (Parameter Testing)", "Pick Training Patches",
             "Save Training Patches", "Finetune Model")  # fmt: skip
    docks = []
    for name in names:
        docks.append(open_widget(viewer, name))
        qtbot.wait(50)
    qtbot.wait(200)

    def holder(widget):
        parent = widget.native.parent()
        while not isinstance(parent, QDockWidget):
            parent = parent.parent()
        return parent

    last = holder(docks[-1])
    assert {holder(d) for d in docks[:-1]} <= set(window.tabifiedDockWidgets(last))
    tune = docks[-1]
    # The newest is in front, with its main button, status and plot within the screen.
    for part in (tune.jobs.run_button.native, tune.jobs.status.native, tune.plot.canvas):
        assert part.isVisible()
        bottom = part.mapTo(window, part.rect().bottomLeft()).y()
        assert bottom <= LAPTOP[1], part
