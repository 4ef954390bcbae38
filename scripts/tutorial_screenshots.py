"""Screenshots for docs/tutorial_finetune.md: the adaptation loop in napari on CDeep3M SBEM.

Runs the real docks (opened through the plugin manifest) on a laptop-sized window, the way
the tutorial describes, and saves small palette PNGs in docs/tutorial/images/:

    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/tutorial_screenshots.py \\
        --data ../shared/data/cdeep3m_sbem

The "correction" step paints the expert ground truth into the picked patches (what a user
does by hand with napari's brush, eraser and fill). Finetuning runs ``--iterations`` (a
handful for the pictures; the tutorial's figures come from benchmarks/adapt.py). Without
``--data`` the small CDeep3M crop in tests/data is used.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from widget_screenshots import settle, wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "tutorial" / "images"
PLUGIN = "empanada-napari"


def shot(viewer, name: str, out: Path, width: int) -> None:
    """Screenshot the window (docks included) as a small palette PNG."""
    from PIL import Image

    settle()
    array = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(array[..., :3])
    height = round(image.height * width / image.width)
    image = image.resize((width, height), Image.LANCZOS)
    path = out / f"{name}.png"
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(
        f"wrote {path} ({path.stat().st_size // 1024} kB, window {array.shape[1]}x{array.shape[0]})"
    )


def load(data: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(raw, binary truth) of the CDeep3M training volume, or the test crop."""
    import tifffile

    if data is None:
        return (
            tifffile.imread(ROOT / "tests/data/cdeep3m_val_crop_raw.tif"),
            tifffile.imread(ROOT / "tests/data/cdeep3m_val_crop_mito_binary.tif"),
        )
    return (
        tifffile.imread(data / "training_raw.tif", key=range(0, 4))[:, :512, :512],
        tifffile.imread(data / "training_mito_binary.tif", key=range(0, 4))[:, :512, :512],
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="the cdeep3m_sbem folder")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--width", type=int, default=1000)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--patches", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=128)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    home = tempfile.TemporaryDirectory()
    os.environ["EMPANADA_NAPARI_HOME"] = home.name  # a fresh registry: built-in models only
    work = Path(tempfile.mkdtemp(prefix="tutorial-"))

    import napari
    from skimage.measure import label

    raw, truth = load(args.data)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 740)
    viewer.window._qt_window.showMaximized()
    image = viewer.add_image(raw, name="cdeep3m")
    viewer.dims.set_current_step(0, 1)

    w2d = viewer.window.add_plugin_dock_widget(PLUGIN, "2D Inference (Parameter Testing)")[1]
    w2d.image.value = image
    w2d.run()
    wait(w2d)
    shot(viewer, "1_before", args.out, args.width)
    viewer.layers.remove(viewer.layers[-1])

    pick = viewer.window.add_plugin_dock_widget(PLUGIN, "Pick Training Patches", tabify=True)[1]
    pick.image.value = image
    pick.number.value = args.patches
    pick.patch_size.value = args.patch_size
    pick.run()
    wait(pick)
    patches, labels = viewer.layers[-2], viewer.layers[-1]
    image.visible = False  # the patches alone, as a user corrects them
    size = args.patch_size
    viewer.camera.center = (size / 2, size / 2)
    viewer.camera.zoom = 0.9 * min(getattr(viewer, "_canvas_size", (600, 600))) / size
    shot(viewer, "2_picked", args.out, args.width)

    # The correction a user makes by hand: here, the expert's labels of the same places.
    corrected = np.zeros_like(labels.data)
    for i, info in enumerate(labels.metadata["empanada_patches"]["patches"]):
        box = tuple(slice(a, b) for a, b in zip(info["start"], info["stop"], strict=True))
        corrected[i] = label(truth[box][0] > 0).astype(np.int32)
    labels.data = corrected
    save = viewer.window.add_plugin_dock_widget(PLUGIN, "Save Training Patches", tabify=True)[1]
    save.folder.value = work / "dataset"
    save.run()
    wait(save)
    shot(viewer, "3_saved", args.out, args.width)

    tune = viewer.window.add_plugin_dock_widget(PLUGIN, "Finetune Model", tabify=True)[1]
    rc = tune.run_controls
    rc.dataset.value = work / "dataset"
    rc.name.value = "Lucchi_Lite_v1_CDeep3M"
    rc.iterations.value = args.iterations
    rc.patch_size.value = args.patch_size
    rc.val_every.value = max(1, args.iterations // 4)
    tune.run()
    wait(tune, timeout=3600)
    bar = tune.scroll_area.verticalScrollBar()
    bar.setValue(bar.maximum())  # down to the live plot
    shot(viewer, "4_finetuned", args.out, args.width)

    for layer in (patches, labels):
        viewer.layers.remove(layer)
    image.visible = True
    viewer.reset_view()
    for dock in (pick, save, tune):
        viewer.window.remove_dock_widget(dock.native)
    # The 2D dock opened at the start now has the new model selected.
    print("2D dock model after finetuning:", w2d.model.value)
    print("finetune dock says:", tune.jobs.status.value)
    print("2D dock settings now:", {k: c.value for k, c in w2d.controls.items()})
    w2d.image.value = image
    w2d.run()
    wait(w2d)
    shot(viewer, "5_after", args.out, args.width)
    viewer.close()
    home.cleanup()


if __name__ == "__main__":
    main()
