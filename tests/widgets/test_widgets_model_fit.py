"""The inference docks say how well the chosen model fits the image, and "auto" picks the
model that fits best (issue 36), on real crops: serial-section TEM (fafb) where the bundled
Lucchi_Lite_v1 is unsure (flipped views agree 0.27) and EM_Lite_v2 fits (0.76), FIB-SEM
(Lucchi) where the default fits."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from empanada_napari.core.ngff import open_labels

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

DATA = Path(__file__).parents[1] / "data"
PLUGIN = "empanada-napari"
D2, D3 = "2D Inference (Parameter Testing)", "3D Inference"
SLOW = 180_000  # ms: two models' first load and scoring on 2 busy cores


@pytest.fixture(scope="module")
def fafb():
    return tifffile.imread(DATA / "fafb_crop_raw.tif")


@pytest.fixture(scope="module")
def lucchi():
    return tifffile.imread(DATA / "lucchi_crop_raw.tif")[:4]


@pytest.fixture
def background(monkeypatch):
    """Docks estimate the fit in the background (the tests' default turns that off)."""
    monkeypatch.setenv("EMPANADA_NAPARI_PRELOAD", "1")


@pytest.fixture
def calls(monkeypatch):
    """Every estimate made (model name, thread), through the real estimate_quality."""
    from empanada_napari.core import quality
    from empanada_napari.widgets._model_fit import clear_fit_cache

    made: list[tuple[str, int]] = []
    real = quality.estimate_quality

    def counting(image, model="default", **kwargs):
        made.append((str(model), threading.get_ident()))
        return real(image, model, **kwargs)

    monkeypatch.setattr(quality, "estimate_quality", counting)
    clear_fit_cache()
    yield made
    clear_fit_cache()


def open_widget(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


def fit_shown(widget) -> bool:
    """The fit line shows a result (not empty, not "...", not "scoring")."""
    line = widget.fit.line.value
    return bool(line) and not line.endswith("...")


def agreement(widget) -> float:
    return float(widget.fit.line.value.split(":")[1])


def test_the_fit_line_warns_for_a_model_unsure_on_the_image(
    make_napari_viewer, qtbot, background, calls, fafb
):
    viewer = make_napari_viewer()
    viewer.add_image(fafb, name="fafb")
    widget = open_widget(viewer, D2)
    assert widget.model.value == "Lucchi_Lite_v1" and widget.fit.line.value.endswith("...")
    qtbot.waitUntil(lambda: fit_shown(widget), timeout=SLOW)
    assert widget.fit.line.value.startswith("fits this image: ")
    assert agreement(widget) < 0.5  # 0.27 measured
    warning = widget.fit.warning.value
    assert not widget.fit.warning.native.isHidden()
    assert "Lucchi_Lite_v1 is unsure on this data" in warning and "Pick Training Patches" in warning
    widget.model.value = "EM_Lite_v2"
    qtbot.waitUntil(lambda: fit_shown(widget), timeout=SLOW)
    assert agreement(widget) >= 0.6  # 0.76 measured
    assert widget.fit.warning.native.isHidden() and widget.fit.warning.value == ""
    main = threading.get_ident()
    assert [name for name, _ in calls] == ["Lucchi_Lite_v1", "EM_Lite_v2"]
    assert all(thread != main for _, thread in calls)  # never the GUI thread


def test_the_fit_is_estimated_once_per_layer_and_model(
    make_napari_viewer, qtbot, background, calls, lucchi
):
    viewer = make_napari_viewer()
    layer = viewer.add_image(lucchi, name="raw")
    w2d = open_widget(viewer, D2)
    qtbot.waitUntil(lambda: fit_shown(w2d), timeout=SLOW)
    assert agreement(w2d) >= 0.6 and w2d.fit.warning.native.isHidden()  # FIB-SEM: it fits
    assert len(calls) == 1
    # The 3D dock on the same layer and model shows it at once, from the cache.
    w3d = open_widget(viewer, D3)
    assert w3d.fit.line.value == w2d.fit.line.value
    # A Run neither waits for nor repeats it, and says nothing about doubt.
    w2d.run()
    qtbot.waitUntil(lambda: not w2d.jobs.busy, timeout=SLOW)
    assert "Added" in w2d.jobs.status.value and "unsure" not in w2d.jobs.status.value
    # Another layer is another image; coming back to the first costs nothing.
    other = viewer.add_image(lucchi.copy(), name="copy")
    w2d.image.value = other
    qtbot.waitUntil(lambda: fit_shown(w2d), timeout=SLOW)
    w2d.image.value = layer
    assert fit_shown(w2d)
    qtbot.wait(200)
    assert len(calls) == 2


def test_a_run_with_an_unsure_model_says_so(make_napari_viewer, qtbot, background, calls, fafb):
    viewer = make_napari_viewer()
    viewer.add_image(fafb, name="fafb")
    widget = open_widget(viewer, D2)
    widget.run()  # at once: the estimate has not come yet
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=SLOW)
    qtbot.waitUntil(lambda: "unsure" in widget.jobs.status.value, timeout=SLOW)
    status = widget.jobs.status.value
    assert status.startswith("Added 'fafb 2D z0'")  # the usual message, then the warning
    assert "Lucchi_Lite_v1 is unsure on this data" in status and "Pick Training Patches" in status


def test_auto_runs_with_the_model_that_fits_best(make_napari_viewer, qtbot, calls, fafb):
    # No background work here: the Run itself scores the models, then the line shows them.
    from empanada_napari.core.settings import InferenceSettings

    viewer = make_napari_viewer()
    viewer.add_image(fafb, name="fafb")
    widget = open_widget(viewer, D2)
    assert widget.model.choices[0] == "auto" and widget.model.value == "Lucchi_Lite_v1"
    widget.model.value = "auto"
    assert widget.model.chosen is None and widget.model.tuned_settings() == {}
    assert widget.confidence_thr.value == InferenceSettings().confidence_thr
    assert "chosen when you run" in widget.fit.line.value
    assert widget.model.tooltip.startswith("auto: the model whose four flipped views")
    assert widget.problem() is None
    widget.run()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=SLOW)
    out = viewer.layers[-1]
    assert out.metadata["empanada"]["model"] == "EM_Lite_v2"
    line = widget.fit.line.value
    assert line.startswith("auto: EM_Lite_v2 (EM_Lite_v2 0.") and "Lucchi_Lite_v1 0." in line
    assert widget.fit.warning.native.isHidden()
    assert "unsure" not in widget.jobs.status.value
    assert widget.model.value == "auto" and widget.model.chosen == "EM_Lite_v2"
    assert "Now: EM_Lite_v2" in widget.model.tooltip
    scored = len(calls)
    assert scored >= 2  # every local model, once
    # The 3D dock on the same layer knows the choice at once, and names its output after it.
    w3d = open_widget(viewer, D3)
    w3d.model.value = "auto"
    assert w3d.fit.line.value == line and w3d.model.chosen == "EM_Lite_v2"
    assert len(calls) == scored


def test_auto_in_3d_names_the_zarr_output_after_the_chosen_model(
    make_napari_viewer, qtbot, calls, fafb, tmp_path
):

    viewer = make_napari_viewer()
    viewer.add_image(fafb, name="fafb")
    widget = open_widget(viewer, D3)
    widget.model.value = "auto"
    widget.out_dir.value = tmp_path
    widget.median_slices.value = 1
    widget.min_extent.value = 1
    widget.min_size.value = 50
    assert widget.problem() is None
    widget.run()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=SLOW)
    out = viewer.layers[-1]
    assert out.metadata["empanada"]["model"] == "EM_Lite_v2", widget.jobs.status.value
    path = tmp_path / "fafb_EM_Lite_v2_stack_xy.zarr"
    assert out.metadata["empanada"]["output"] == str(path)
    assert np.asarray(open_labels(path)).max() > 0
    # A second Run finds that output and asks for resume or overwrite (before any model).
    assert "exists" in widget.problem()


def test_a_dock_closed_while_its_fit_is_estimated_is_left_alone(
    make_napari_viewer, qtbot, background, calls, lucchi
):
    from empanada_napari.widgets._jobs import compute_executor

    viewer = make_napari_viewer()
    viewer.add_image(lucchi, name="raw")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, D2)
    assert widget.fit.line.value.endswith("...")
    viewer.window.remove_dock_widget(dock)
    widget.native.deleteLater()
    qtbot.wait(50)
    compute_executor().submit(lambda: None).result(timeout=SLOW / 1000)
    qtbot.wait(200)  # the result reaches a deleted dock: nothing happens, nothing raises
    assert len(calls) == 1
