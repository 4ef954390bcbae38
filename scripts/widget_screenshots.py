"""Screenshots of the plugin's dock widgets on the bundled real EM sample, for docs/widgets/.

Runs the real widgets (opened through the plugin manifest, as from napari's Plugins menu) on
the bundled Lucchi FIB-SEM crop with the bundled model, and saves small palette PNGs:

    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/widget_screenshots.py

Writes ``docs/widgets/images/<widget>.png``. Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from empanada_napari.widgets._napari_compat import main_window

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "widgets" / "images"
PLUGIN = "empanada-napari"


def wait(widget, timeout: float = 600.0) -> None:
    """Process Qt events until the widget's job is finished."""
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while widget.jobs.busy:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the widget's job did not finish")
    settle()


def settle() -> None:
    """Let Qt lay out and repaint new docks, layers and progress bars."""
    from qtpy.QtWidgets import QApplication

    for _ in range(30):
        QApplication.processEvents()
        time.sleep(0.01)


def save(viewer, name: str, out: Path, width: int) -> Path:
    """Screenshot the whole window, shrink it and save it as a small palette PNG."""
    from PIL import Image

    path = out / f"{name}.png"
    viewer.reset_view()
    array = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(array[..., :3])
    height = round(image.height * width / image.width)
    image = image.resize((width, height), Image.LANCZOS)
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"wrote {shown} ({path.stat().st_size // 1024} kB)")
    return path


def open_viewer(size=(1366, 740)):  # a laptop screen less the taskbar
    import napari

    from empanada_napari._sample_data import make_sample_data

    viewer = napari.Viewer(show=True)
    main_window(viewer).resize(*size)
    data, meta, _ = make_sample_data()[0]
    layer = viewer.add_image(data, **meta)
    viewer.dims.set_current_step(0, 8)
    return viewer, layer


def dock(viewer, name: str):
    viewer.window.remove_dock_widget("all")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    settle()
    return widget


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--width", type=int, default=1000, help="PNG width in pixels")
    parser.add_argument("--only", help="one screenshot: inference_2d, ..., click_to_add")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # A fresh registry home: the Model Manager shows the built-in models, not this machine's.
    home = tempfile.TemporaryDirectory()
    os.environ["EMPANADA_NAPARI_HOME"] = home.name

    viewer, image = open_viewer()
    viewer.reset_view()
    if args.only == "click_to_add":
        click_to_add(viewer, image, args)
        viewer.close()
        home.cleanup()
        return

    w2d = dock(viewer, "2D Inference (Parameter Testing)")
    w2d.image.value = image
    w2d.run()
    wait(w2d)
    save(viewer, "inference_2d", args.out, args.width)

    viewer.layers.remove(viewer.layers[-1])
    w3d = dock(viewer, "3D Inference")
    w3d.image.value = image
    w3d.median_slices.value = 5
    w3d.min_size.value = 2000
    w3d.run()
    wait(w3d)
    save(viewer, "inference_3d", args.out, args.width)

    dock(viewer, "Model Manager")
    save(viewer, "model_manager", args.out, args.width)

    export = dock(viewer, "Export Segmentations")
    with tempfile.TemporaryDirectory() as folder:
        export.folder.value = folder
        export.format.value = "zarr"
        export.run()
        wait(export)
        save(viewer, "export", args.out, args.width)
    for layer in list(viewer.layers)[1:]:
        viewer.layers.remove(layer)
    click_to_add(viewer, image, args)
    viewer.close()
    home.cleanup()


def click_to_add(viewer, image, args) -> None:
    """Click to Add on the sample: empty labels, then one click inside each of the five
    largest mitochondria the model finds on slice 8; each becomes an object."""
    import numpy as np
    from scipy import ndimage as ndi

    from empanada_napari.core.inference.engine import Engine2D

    z = 8
    found = Engine2D("default", "cpu").segment(np.asarray(image.data[z]))
    ids, sizes = np.unique(found[found > 0], return_counts=True)
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint32), name="mito labels", scale=image.scale
    )
    widget = dock(viewer, "Click to Add")
    widget.image.value, widget.labels_layer.value = image, labels
    viewer.dims.set_current_step(0, z)
    for label_id in ids[np.argsort(-sizes)][:5]:
        dist = ndi.distance_transform_edt(found == label_id)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        widget.click(image.data_to_world((z, y, x)))
        wait(widget)
    viewer.layers.selection.active = labels
    save(viewer, "click_to_add", args.out, args.width)


if __name__ == "__main__":
    main()
