"""Screenshots for docs/tutorial_finetune.md: the adaptation loop in napari on CDeep3M SBEM.

Runs the real docks (opened through the plugin manifest, tabbed as napari does on a laptop
screen) on a 1366 x 768 window, the way the tutorial describes, and saves small palette PNGs
in docs/tutorial/images/:

    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/tutorial_screenshots.py \\
        --data ../shared/data/cdeep3m_sbem

Two rounds of the loop on one slice ("current slice only", so every picked place is outlined
in one view): segment; pick patches (outlined on the source, listed in the dock's table);
Click to Add on a mitochondrion the prefill missed; save (the dock counts the objects
changed); finetune (the dock says the dataset's round); segment again; then round 2: pick
with the finetuned model, skipping the places saved, save into the same dataset, and the
Finetune dock ready to start from the last model. Where a person corrects the patches, the
script paints the expert ground truth instead (what a user does by hand with Click to Add,
napari's brush, eraser and fill). Finetuning runs ``--iterations`` (a handful for the
pictures; the tutorial's figures come from benchmarks/adapt.py). Without ``--data`` the
small CDeep3M crop in tests/data is used (64-pixel patches). Takes a few minutes on 2 CPU
cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from empanada_napari.widgets._napari_compat import main_window
from widget_screenshots import settle, wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "tutorial" / "images"
PLUGIN = "empanada-napari"
SLICE = 1  # the slice every step works on


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


def dismiss_toasts() -> None:
    """Close napari's notification pop-ups (they would cover later pictures)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication

    for toast in QApplication.topLevelWidgets():
        if isinstance(toast, NapariQtNotification):
            toast.close()
    for window in QApplication.topLevelWidgets():
        for toast in window.findChildren(NapariQtNotification):
            toast.close()
    settle()


def scroll(widget, where: str) -> None:
    """Scroll a dock to its "top" or "bottom" (its status line under the Run button)."""
    bar = widget.scroll_area.verticalScrollBar()
    settle()
    bar.setValue(bar.minimum() if where == "top" else bar.maximum())
    settle()


def front(widget) -> None:
    """Bring the tab of ``widget``'s dock to the front (a click on its tab)."""
    from qtpy.QtWidgets import QDockWidget

    native = widget.native
    while native is not None and not isinstance(native, QDockWidget):
        native = native.parent()
    if native is not None:
        native.show()
        native.raise_()
    settle()


def open_dock(viewer, name: str):
    widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)[1]
    settle()  # the plugin tabs it with its other docks once it is in the window
    front(widget)
    return widget


def expert(labels, truth: np.ndarray) -> np.ndarray:
    """The correction a user makes by hand: here, the expert's labels of the same places."""
    from skimage.measure import label

    corrected = np.zeros_like(labels.data)
    for i, info in enumerate(labels.metadata["empanada_patches"]["patches"]):
        box = tuple(slice(a, b) for a, b in zip(info["start"], info["stop"], strict=True))
        corrected[i] = label(truth[box][0] > 0).astype(corrected.dtype)
    return corrected


def missed(labels, truth: np.ndarray, min_area: int) -> list[tuple[int, int, int, int]]:
    """(area, patch, y, x) of expert objects the prefill misses entirely, largest first;
    (y, x) is the point deepest inside the object (where a user would click)."""
    from scipy import ndimage as ndi
    from skimage.measure import label

    found = []
    for k, info in enumerate(labels.metadata["empanada_patches"]["patches"]):
        box = tuple(slice(a, b) for a, b in zip(info["start"], info["stop"], strict=True))
        objects = label(truth[box][0] > 0)
        prefill = np.asarray(labels.data[k]) > 0
        for obj in range(1, int(objects.max()) + 1):
            mask = objects == obj
            area = int(mask.sum())
            if area < min_area or (mask & prefill).sum() > 0.05 * area:
                continue
            dist = ndi.distance_transform_edt(mask)
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            found.append((area, k, int(y), int(x)))
    return sorted(found, reverse=True)


def pick(viewer, widget, image, args, **values):
    """Pick patches from the slice on screen; returns (places, patches, labels) layers."""
    widget.image.value = image
    widget.number.value = args.patches
    widget.patch_size.value = args.patch_size
    widget.current_slice.value = True
    for key, value in values.items():
        getattr(widget, key).value = value
    widget.run()
    wait(widget)
    print("pick dock says:", widget.jobs.status.value)
    # The outlines are added last, above the patch layers.
    patches, labels, places = viewer.layers[-3], viewer.layers[-2], viewer.layers[-1]
    return places, patches, labels


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="the cdeep3m_sbem folder")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--width", type=int, default=1000, help="PNG width in pixels")
    p.add_argument("--iterations", type=int, default=12, help="finetuning iterations")
    p.add_argument("--patches", type=int, default=6, help="patches picked per round")
    p.add_argument("--patch-size", type=int, help="default: 128 (64 on the test crop)")
    args = p.parse_args(argv)
    if args.patch_size is None:
        args.patch_size = 128 if args.data is not None else 64
    args.out.mkdir(parents=True, exist_ok=True)
    home = tempfile.TemporaryDirectory()
    os.environ["EMPANADA_NAPARI_HOME"] = home.name  # a fresh registry: built-in models only
    work = Path(tempfile.mkdtemp(prefix="tutorial-"))
    dataset = work / "dataset"

    import napari

    raw, truth = load(args.data)
    viewer = napari.Viewer(show=True)
    main_window(viewer).resize(1366, 740)  # a laptop screen less the taskbar
    main_window(viewer).showMaximized()
    image = viewer.add_image(raw, name="cdeep3m")
    viewer.dims.set_current_step(0, SLICE)

    # 1. Segment with the bundled model.
    w2d = open_dock(viewer, "2D Inference (Parameter Testing)")
    w2d.image.value = image
    w2d.run()
    wait(w2d)
    scroll(w2d, "bottom")
    shot(viewer, "1_before", args.out, args.width)
    before = viewer.layers[-1]
    before.visible = False

    # 2. Pick patches where the model doubts: outlined on the source, listed in the table.
    picker = open_dock(viewer, "Pick Training Patches")
    places, patches, labels = pick(viewer, picker, image, args)
    viewer.reset_view()  # napari's Home button: the whole slice, every place outlined
    shot(viewer, "2_picked", args.out, args.width)

    # 3. Correct a patch: Click to Add on a mitochondrion the prefill missed.
    clicker = open_dock(viewer, "Click to Add")
    clicker.image.value, clicker.labels_layer.value = patches, labels
    tries = missed(labels, truth, min_area=(args.patch_size // 8) ** 2)
    print("missed by the prefill (area, patch, y, x):", tries[:5])
    for _area, k, y, x in tries[:4]:
        picker.navigator.go_to(k)  # a click on the patch's row in the table
        ids_before = int(np.max(labels.data[k]))
        clicker.click(labels.data_to_world((k, y, x)))
        wait(clicker)
        print(f"click on patch {k} at ({y}, {x}):", clicker.jobs.status.value)
        if int(np.max(labels.data[k])) > ids_before:
            break
    viewer.layers.selection.active = labels
    shot(viewer, "3_click_to_add", args.out, args.width)
    dismiss_toasts()

    # 4. Save (the rest of the correction: the expert's labels in place of a person's).
    labels.data = expert(labels, truth)
    saver = open_dock(viewer, "Save Training Patches")
    saver.folder.value = dataset
    saver.keep_empty.value = any(int(m.max()) == 0 for m in labels.data)
    saver.run()
    wait(saver)
    print("save dock says:", saver.jobs.status.value)
    shot(viewer, "4_saved", args.out, args.width)

    # 5. Finetune; the dock says the dataset's round.
    tune = open_dock(viewer, "Finetune Model")
    rc = tune.run_controls
    rc.dataset.value = dataset
    rc.name.value = "CDeep3M_round1"
    rc.iterations.value = args.iterations
    rc.patch_size.value = args.patch_size
    rc.val_every.value = max(1, args.iterations // 4)
    tune.run()
    wait(tune, timeout=3600)
    print("finetune dock says:", rc.loop.value, "|", tune.jobs.status.value)
    scroll(tune, "bottom")  # the live plot and what the run did
    shot(viewer, "5_finetuned", args.out, args.width)

    # 6. Segment again: the first 2D dock now has the new model selected.
    for layer in (patches, labels):
        viewer.layers.remove(layer)  # saved: done with them
    places.visible = False
    # The viewer stays on the slice it showed (the patch layers never widen the slider).
    print("slice on screen after removing the patch layers:", viewer.dims.point[0])
    front(w2d)
    print("2D dock model after finetuning:", w2d.model.value)
    print("2D dock settings now:", {k: c.value for k, c in w2d.controls.items()})
    w2d.image.value = image
    w2d.run()
    wait(w2d)
    viewer.reset_view()
    scroll(w2d, "bottom")
    shot(viewer, "6_after", args.out, args.width)
    viewer.layers[-1].visible = False

    # 7. Round 2: pick with the finetuned model, never where round 1 was saved.
    places.name = "round 1 places"
    places.edge_color = "cyan"  # recoloured for the picture, to tell the rounds apart
    places.text.color = "cyan"
    places.visible = True
    front(picker)
    places2, patches2, labels2 = pick(viewer, picker, image, args, skip_saved=dataset)
    print("round 2 picked with:", picker.model.value)
    viewer.reset_view()
    scroll(picker, "bottom")
    shot(viewer, "7_round2_picked", args.out, args.width)

    # 8. Save into the same dataset; Finetune is ready to start from the last model.
    labels2.data = expert(labels2, truth)
    front(saver)
    saver.keep_empty.value = any(int(m.max()) == 0 for m in labels2.data)
    saver.run()
    wait(saver)
    print("save dock says:", saver.jobs.status.value)
    front(tune)
    rc.dataset.value = work  # choosing the folder again: the dock reads its manifest
    rc.dataset.value = dataset
    print("finetune dock proposes the name:", rc.name.value)  # CDeep3M_round2
    scroll(tune, "top")
    dismiss_toasts()
    print("finetune dock says:", tune.model.value, "|", rc.loop.value)
    shot(viewer, "8_round2_finetune", args.out, args.width)
    viewer.close()
    home.cleanup()


if __name__ == "__main__":
    main()
