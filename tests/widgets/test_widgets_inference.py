"""2D and 3D inference widgets on the real Lucchi crop with the bundled model (pytest-qt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from empanada_napari.core.ngff import open_labels, read_meta

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

DATA = Path(__file__).parents[1] / "data"
PLUGIN = "empanada-napari"


@pytest.fixture(scope="module")
def crop():
    return tifffile.imread(DATA / "lucchi_crop_raw.tif")


@pytest.fixture(scope="module")
def truth():
    return tifffile.imread(DATA / "lucchi_crop_mito_binary.tif") > 0


def open_widget(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def wait_done(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=timeout)


def iou(a, b):
    a, b = a > 0, b > 0
    return (a & b).sum() / max(1, (a | b).sum())


def collect_errors(monkeypatch):
    from empanada_napari.widgets import _common

    messages: list[str] = []
    monkeypatch.setattr(_common, "show_error", messages.append)
    return messages


# ----------------------------------------------------------------------------- 2D


def test_2d_current_slice_matches_engine(make_napari_viewer, qtbot, crop, truth):
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.models.loading import cached_models

    viewer = make_napari_viewer()
    layer = viewer.add_image(crop[:4], name="raw")
    viewer.dims.set_current_step(0, 2)
    widget = open_widget(viewer, "2D Inference (Parameter Testing)")
    assert widget.image.value is layer
    widget.confidence_thr.value = 0.4
    assert widget.jobs.run_button.enabled
    widget.jobs.run_button.clicked()
    assert widget.jobs.busy  # runs in a worker thread, the click returns at once
    wait_done(qtbot, widget)
    out = viewer.layers[-1]
    assert type(out).__name__ == "Labels"
    # The slice's result sits on that slice only: one plane, translated to z = 2.
    assert out.data.shape == (1, 320, 320) and out.data.dtype == np.uint32
    assert tuple(out.translate) == (2, 0, 0)
    assert out.metadata["empanada"]["settings"]["confidence_thr"] == 0.4
    expected = Engine2D("default", "cpu", confidence_thr=0.4).segment(crop[2])
    np.testing.assert_array_equal(out.data[0], expected)
    assert len(np.unique(out.data)) > 3
    assert iou(out.data[0], truth[2]) > 0.7
    # A second click reuses the loaded model.
    models = cached_models()
    widget.jobs.run_button.clicked()
    wait_done(qtbot, widget)
    assert cached_models() == models
    assert widget.jobs.progress.value == widget.jobs.progress.max == 1


def test_2d_roi_into_existing_layer_with_undo(make_napari_viewer, qtbot, crop):
    from empanada_napari.core.inference.engine import Engine2D

    viewer = make_napari_viewer()
    viewer.add_image(crop[:3], name="raw")
    target = viewer.add_labels(np.zeros((3, 320, 320), np.uint32), name="target")
    shapes = viewer.add_shapes([[[40, 60], [40, 260], [200, 260], [200, 60]]], name="roi")
    viewer.dims.set_current_step(0, 1)
    widget = open_widget(viewer, "2D Inference (Parameter Testing)")
    widget.image.value = viewer.layers["raw"]
    widget.region.value = "shapes ROI"
    widget.roi.value = shapes
    widget.output.value = target
    assert widget.problem() is None
    widget.run()
    wait_done(qtbot, widget)
    expected = Engine2D("default", "cpu").segment(crop[1, 40:200, 60:260])
    np.testing.assert_array_equal(target.data[1, 40:200, 60:260], expected)
    assert expected.max() > 0
    assert not target.data[0].any() and not target.data[2].any()
    assert not target.data[1, :40].any() and not target.data[1, :, :60].any()
    target.undo()  # the write went through napari's undo history
    assert not target.data.any()


def test_2d_batch_all_slices(make_napari_viewer, qtbot, crop, truth):
    viewer = make_napari_viewer()
    viewer.add_image(crop[:3], name="raw", scale=(2, 1, 1))
    widget = open_widget(viewer, "2D Inference (Parameter Testing)")
    widget.region.value = "all slices (batch)"
    widget.run()
    wait_done(qtbot, widget)
    out = viewer.layers[-1]
    assert out.data.shape == (3, 320, 320) and out.data.dtype == np.uint32
    assert tuple(out.scale) == (2, 1, 1)
    assert iou(out.data, truth[:3]) > 0.7
    assert widget.jobs.progress.value == widget.jobs.progress.max == 3


def test_2d_bad_inputs_notify(make_napari_viewer, qtbot, monkeypatch):
    errors = collect_errors(monkeypatch)
    viewer = make_napari_viewer()
    widget = open_widget(viewer, "2D Inference (Parameter Testing)")
    # No image at all: the button is disabled with the reason, a click explains it.
    assert not widget.jobs.run_button.enabled
    assert "Image layer" in widget.jobs.reason.value
    widget.run()
    assert errors and "Image layer" in errors[-1]
    # A Labels layer is not offered as an image; an RGB image is refused with the reason.
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="labels")
    assert widget.image.value is None
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="rgb", rgb=True)
    assert widget.image.value.name == "rgb"
    assert "RGB" in widget.jobs.reason.value and not widget.jobs.run_button.enabled
    widget.run()
    assert "RGB" in errors[-1]
    # A boolean mask is not an EM image; an empty Shapes layer is not an ROI.
    viewer.add_image(np.zeros((64, 64), bool), name="mask")
    widget.image.value = viewer.layers["mask"]
    widget.run()
    assert "dtype bool" in errors[-1]
    viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")
    viewer.add_shapes(name="no shapes")
    widget.image.value = viewer.layers["grey"]
    widget.region.value = "shapes ROI"
    widget.roi.value = viewer.layers["no shapes"]
    widget.run()
    assert "no shapes" in errors[-1] and not widget.jobs.run_button.enabled
    widget.region.value = "current slice"
    # A constant image is valid (it segments to nothing), also tile by tile.
    viewer.add_image(np.full((64, 64), 7, np.uint8), name="flat")
    widget.image.value = viewer.layers["flat"]
    assert widget.jobs.run_button.enabled
    widget.tile_size.value = 64
    widget.jobs.run_button.clicked()
    wait_done(qtbot, widget)
    assert viewer.layers[-1].data.shape == (64, 64) and not viewer.layers[-1].data.any()


# ----------------------------------------------------------------------------- 3D


def same_partition(a, b) -> bool:
    """True when two label arrays are equal up to relabelling."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_3d_stack_real_crop(make_napari_viewer, qtbot, crop, truth):
    from empanada_napari.core.inference.engine import Engine2D
    from empanada_napari.core.inference.stack import segment_stack_3d

    viewer = make_napari_viewer()
    volume = crop[:6, :192, :192]
    layer = viewer.add_image(volume, name="raw", scale=(5, 5, 5))
    widget = open_widget(viewer, "3D Inference")
    assert widget.image.value is layer and widget.problem() is None
    widget.min_size.value = 200
    widget.jobs.run_button.clicked()
    wait_done(qtbot, widget)
    out = viewer.layers[-1]
    assert out.name == "raw 3D stack xy Lucchi_Lite_v1"  # says which model made it
    assert type(out).__name__ == "Labels" and tuple(out.scale) == (5, 5, 5)
    labels = np.asarray(out.data)
    assert labels.shape == volume.shape and labels.dtype == np.uint32
    assert 1 <= labels.max() < 50
    assert iou(labels, truth[:6, :192, :192]) > 0.7
    expected = segment_stack_3d(volume, Engine2D("default", "cpu"), min_size=200)
    assert same_partition(labels, expected)
    assert widget.jobs.progress.value == widget.jobs.progress.max


def test_3d_zarr_output_and_reader(make_napari_viewer, qtbot, crop, tmp_path):

    viewer = make_napari_viewer()
    viewer.add_image(crop[:4, 160:, 160:], name="raw", scale=(5, 5, 5))
    widget = open_widget(viewer, "3D Inference")
    widget.out_dir.value = tmp_path
    widget.min_size.value = 50
    widget.min_extent.value = 2  # only 4 slices
    assert widget.problem() is None
    widget.run()
    wait_done(qtbot, widget)
    out = viewer.layers[-1]
    path = tmp_path / "raw_Lucchi_Lite_v1_stack_xy.zarr"
    assert path.exists()
    stored = open_labels(path)
    assert read_meta(path)["status"] == "complete"
    np.testing.assert_array_equal(np.asarray(out.data), stored[...])
    assert stored[...].max() > 0
    assert out.name.endswith("Lucchi_Lite_v1")  # the result says which model made it
    # Issue 38: the zarr-backed result can be edited in place, with undo, by the docks.
    before = stored[...].copy()
    label_id = int(before.max())
    points = viewer.add_points([np.argwhere(before == label_id)[0]], scale=(5, 5, 5))
    delete = open_widget(viewer, "Delete Labels")
    delete.labels_layer.value, delete.points.value = out, points
    delete()
    wait_done(qtbot, delete)
    assert "deleted" in delete.jobs.status.value, delete.jobs.status.value
    assert not (open_labels(path)[...] == label_id).any()  # on disk
    out.undo()
    np.testing.assert_array_equal(open_labels(path)[...], before)
    # napari opens it again through the plugin's reader as a Labels layer, at its voxel size.
    layers = viewer.open(path, plugin=PLUGIN)
    assert type(layers[0]).__name__ == "Labels"
    assert tuple(layers[0].scale) == (5, 5, 5)
    np.testing.assert_array_equal(np.asarray(layers[0].data), stored[...])
    # Running again into the same folder asks for resume/overwrite first.
    assert "exists" in widget.problem()


def test_3d_cancel_stops_and_leaves_viewer_consistent(make_napari_viewer, qtbot, crop):
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="raw")
    widget = open_widget(viewer, "3D Inference")
    widget.mode.value = "ortho"
    widget.chunks.value = 64  # 25 blocks, so there is something left to cancel
    assert not widget.pixel_vote_thr.native.isHidden() and widget.axis.native.isHidden()
    widget.run()
    qtbot.waitUntil(lambda: widget.jobs.progress.value >= 1, timeout=60_000)
    widget.jobs.cancel_button.clicked()
    wait_done(qtbot, widget, timeout=20_000)
    assert widget.jobs.status.value == "Cancelled."
    assert widget.jobs.progress.value < widget.jobs.progress.max
    assert [layer.name for layer in viewer.layers] == ["raw"]
    assert widget.jobs.run_button.enabled and not widget.jobs.cancel_button.enabled


def test_3d_refuses_2d_image(make_napari_viewer, monkeypatch):
    errors = collect_errors(monkeypatch)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="plane")
    widget = open_widget(viewer, "3D Inference")
    assert not widget.jobs.run_button.enabled
    widget.run()
    assert "2D Inference" in errors[-1]


def test_3d_says_the_cores_block_rules_before_run(make_napari_viewer, crop):
    """Chunk size and halo are checked by the core's one rule (plan.blocking), shown under
    the memory setting and in the dock's problem, before any work (issue 34)."""
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="raw")
    widget = open_widget(viewer, "3D Inference")
    assert widget.problem() is None and "block" in widget.plan.value
    widget.chunks.value = 16  # thinner than the network needs
    assert "thinner than 32" in widget.problem() and "thinner" in widget.plan.value
    assert not widget.jobs.run_button.enabled
    widget.chunks.value = 0
    widget.median_slices.value, widget.halo.value = 7, 1  # the halo must cover half of 7
    assert "halo" in widget.problem() and "median" in widget.problem()
    widget.halo.value = 0
    assert widget.problem() is None


def test_3d_passes_every_parameter_to_the_chunked_driver(
    make_napari_viewer, qtbot, monkeypatch, tmp_path
):
    import sys
    import types

    calls = []

    def segment_volume(image, model="default", **kwargs):
        calls.append((image.shape, model, kwargs))
        kwargs["progress"](1, 2)
        kwargs["progress"](2, 2)
        return np.ones(image.shape, np.uint32)

    fake = types.ModuleType("empanada_napari.core.inference.chunked")
    fake.segment_volume = segment_volume
    monkeypatch.setitem(sys.modules, "empanada_napari.core.inference.chunked", fake)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 6, 32, 32), np.uint16), name="t")  # 4D: current volume
    widget = open_widget(viewer, "3D Inference")
    widget.mode.value = "ortho"
    widget.pixel_vote_thr.value = 3
    widget.out_dir.value = tmp_path
    widget.chunks.value = 128
    widget.scheduler.value = "local:2"
    widget.confidence_thr.value = 0.3
    widget.run()
    wait_done(qtbot, widget)
    shape, model, kwargs = calls[0]
    assert shape == (6, 32, 32) and model == "Lucchi_Lite_v1"
    # The settings travel as the objects of core/settings.py (one form, end to end).
    inference, stack, ortho, blocks = (kwargs[k] for k in ("inference", "stack", "ortho", "blocks"))
    assert kwargs["mode"] == "ortho" and ortho.pixel_vote_thr == 3
    assert kwargs["out"] == tmp_path / "t_Lucchi_Lite_v1_ortho.zarr"
    assert blocks.chunks == (128, 128, 128) and blocks.halo is None
    assert kwargs["scheduler"] == "local:2" and kwargs["device"] == "auto"
    assert inference.confidence_thr == 0.3 and stack.median_slices == 3
    assert stack.min_size == 500 and stack.min_extent == 5
    assert kwargs["cancel"] is not None
    assert viewer.layers[-1].name == "t 3D ortho Lucchi_Lite_v1"
    assert viewer.layers[-1].metadata["empanada"]["model"] == "Lucchi_Lite_v1"
    assert widget.jobs.progress.value == widget.jobs.progress.max == 2


def test_docks_take_a_models_tuned_settings_and_keep_the_users_own(make_napari_viewer):
    """A finetuned model's tuned post-processing settings fill the 2D and 3D docks when it
    is chosen; a value the user changed stays; the default model brings the defaults back."""
    import yaml

    from empanada_napari.core.models.registry import get_registry
    from empanada_napari.core.settings import InferenceSettings

    registry = get_registry()
    bundled = registry.get("Lucchi_Lite_v1")
    config = yaml.safe_load(Path(bundled.config_path).read_text())
    config.pop("default_model", None)
    tuned = {"confidence_thr": 0.3, "center_confidence_thr": 0.2, "min_area": 200}
    config["inference_settings"] = tuned
    model_file = Path(bundled.config_path).parent / config["model"]
    registry.register("Tuned", config, model=model_file)

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 64, 64), np.uint8), name="raw")
    w2d = open_widget(viewer, "2D Inference (Parameter Testing)")
    w3d = open_widget(viewer, "3D Inference")
    defaults = InferenceSettings()
    assert w2d.confidence_thr.value == defaults.confidence_thr
    w2d.center_confidence_thr.value = 0.15  # the user's own choice
    for widget in (w2d, w3d):
        widget.model.value = "Tuned"
    assert w2d.confidence_thr.value == 0.3 and w2d.min_area.value == 200
    assert w2d.center_confidence_thr.value == 0.15  # kept
    assert w3d.confidence_thr.value == 0.3 and w3d.center_confidence_thr.value == 0.2
    assert "min_area" not in w3d.controls  # 3D has its own minimum size
    assert w2d.params()["min_area"] == 200
    w2d.model.value = "Lucchi_Lite_v1"
    assert w2d.confidence_thr.value == defaults.confidence_thr and w2d.min_area.value == 0
    assert w2d.center_confidence_thr.value == 0.15


def test_3d_region_of_slices_and_a_rectangle_lands_in_place(
    make_napari_viewer, qtbot, crop, tmp_path, monkeypatch
):
    """Issue 38: a slice range and a Shapes rectangle segment only that region, placed at its
    offset and scale; the output is named after the region; the block memory is shown."""
    from empanada_napari.core.inference.chunked import segment_volume
    from empanada_napari.widgets._region import RECTANGLE

    viewer = make_napari_viewer()
    layer = viewer.add_image(crop, name="raw", scale=(5, 5, 5), translate=(0, 100, 0))
    shapes = viewer.add_shapes(
        [np.array([[64, 96], [64, 288], [256, 288], [256, 96]]) * 5.0 + [100, 0]],
        shape_type="rectangle",
        ndim=2,
    )
    widget = open_widget(viewer, "3D Inference")
    widget.image.value = layer
    widget.region.first.value, widget.region.last.value = 2, 7
    widget.region.area.value = RECTANGLE
    widget.region.shapes.value = shapes
    widget.out_dir.value = tmp_path
    widget.min_size.value = 50
    widget.min_extent.value = 2
    assert widget.problem() is None
    assert widget.plan.value == "region z 2-7, y 64-255, x 96-287: one block"
    widget.run()
    wait_done(qtbot, widget)
    out = viewer.layers[-1]
    assert out.name.endswith("z2-7_y64-255_x96-287"), out.name
    assert tuple(out.scale) == (5, 5, 5)
    assert tuple(out.translate) == (10, 100 + 64 * 5, 96 * 5)
    path = tmp_path / "raw_Lucchi_Lite_v1_stack_xy_z2-7_y64-255_x96-287.zarr"
    assert path.exists() and out.data.shape == (6, 192, 192)
    expected = segment_volume(crop[2:8, 64:256, 96:288], "default", min_size=50, min_extent=2)
    assert expected.max() > 0 and same_partition(np.asarray(out.data), expected)
    assert out.metadata["empanada"]["region"] == [[2, 8], [64, 256], [96, 288]]
    assert 10 <= viewer.dims.point[0] <= 35  # the viewer went to the region (slices 2-7)
    # An empty region is refused before anything runs; a smaller block memory cuts blocks.
    widget.region.first.value, widget.region.last.value = 9, 4
    assert "the last slice is before the first" in widget.problem()
    assert widget.region.last.max == 15  # the image's slices
    widget.region.first.value, widget.region.last.value = 0, 15
    widget.region.area.value = "whole planes"
    from empanada_napari.core.inference.blocks import plan

    monkeypatch.setattr(plan, "SINGLE_BLOCK_VOXELS", 0)  # else this small crop is one block
    monkeypatch.setattr(plan, "BYTES_PER_VOXEL", {"stack": 240, "ortho": 880})  # and fits
    widget.memory_gb.value = 0.1
    assert "blocks of" in widget.plan.value, widget.plan.value
    assert widget.settings()["blocks"].memory_gb == 0.1


def test_3d_region_of_the_view_on_screen(make_napari_viewer, qtbot, crop):
    """Issue 38: 'view on screen' is what the canvas shows of the image (zoomed in on a
    corner: that corner), refused in the 3D view."""
    from empanada_napari.widgets._region import VIEW

    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(crop, name="raw")
    widget = open_widget(viewer, "3D Inference")
    widget.region.area.value = VIEW
    camera = viewer.camera
    camera.zoom = 8.0
    camera.center = (0, 60, 70)
    qtbot.waitUntil(lambda: np.asarray(layer.corner_pixels)[1, -1] < 300, timeout=5000)
    box = widget.region.box(layer, crop.shape)
    assert box is not None and box[0] == slice(0, 16)
    (y0, y1), (x0, x1) = (box[1].start, box[1].stop), (box[2].start, box[2].stop)
    assert y0 <= 60 < y1 and x0 <= 70 < x1 and y1 - y0 < 200 and x1 - x0 < 200
    viewer.dims.ndisplay = 3
    assert "2D view" in widget.problem()


def test_3d_settings_problems_name_the_controls_on_screen(make_napari_viewer, crop):
    """Issue 34/37: the dock says the settings' own rule (one check, in core) with the labels
    the user sees, not the field names."""
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="raw")
    widget = open_widget(viewer, "3D Inference")
    widget.median_slices.value = 4
    problem = widget.problem()
    assert problem is not None and "median slices must be odd" in problem, problem
    assert "median_slices" not in problem


def test_3d_scheduler_address_is_checked_by_the_core_rule(make_napari_viewer, crop, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="raw")
    widget = open_widget(viewer, "3D Inference")
    widget.out_dir.value = tmp_path
    for bad in ("foo", "local:x", "http://host"):
        widget.scheduler.value = bad
        assert widget.problem().startswith("Dask scheduler: "), bad
    for good in ("tcp://host:8786", "host:8786", "local:2"):
        widget.scheduler.value = good
        assert widget.problem() is None, good
