"""Shared fixtures.

``toy_model_file`` is a tiny TorchScript model that follows the MitoNet contract exactly
(same forward signature, keys, resolutions and render-step semantics) with hand-set weights:
dark pixels are foreground, the centre heat-map is a Gaussian blur of the foreground
probability (so it peaks at the middle of each round blob) and all offsets are zero. It lets
the engine be tested with predictable answers. Accuracy on real EM is tested with real models
and real crops elsewhere, never with this toy.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

from .https_server import certificate, server  # noqa: F401 - fixtures for download tests

DATA = Path(__file__).parent / "data"


def _none_leaking_qt() -> str | None:
    """The installed Qt binding if it is one known to drop references to ``None``, else None.

    shiboken6 6.12.0 (PySide6 6.12.0) loses one reference to ``None`` each time a Qt method
    returns a null object (``QApplication.activePopupWidget()``, which napari's main window
    calls on every event, ``widget.parent()``...): about 4,400 per napari viewer opened and
    closed. Python >= 3.12 never frees ``None``; on 3.11 the count reaches zero after a few
    dozen viewers and the interpreter aborts ('Fatal Python error: none_dealloc').
    PySide6 <= 6.11.3 and PyQt5 5.15 do not leak, and the ``[testing]``/``[all]`` extras keep
    PySide6 below 6.12 on Python < 3.12 (docs/none_dealloc.md).
    """
    import sys
    from importlib.metadata import PackageNotFoundError, version

    if sys.version_info >= (3, 12):
        return None
    try:
        shiboken = version("shiboken6")
    except PackageNotFoundError:
        return None
    return f"shiboken6 {shiboken}" if shiboken.startswith("6.12.") else None


# Only where that binding is installed anyway (an environment made before the extras excluded
# it): references that are never released keep None alive. Unneeded with the extras' versions.
_LEAKY_QT = _none_leaking_qt()
_NONE_REFERENCES = [None] * 2_000_000 if _LEAKY_QT else []


def pytest_report_header(config):
    if _LEAKY_QT:
        return (
            f"{_LEAKY_QT} on Python < 3.12 drops references to None; tests hold 2,000,000 "
            "extra ones (docs/none_dealloc.md). pip install -e '.[testing]' gets a fixed PySide6."
        )
    return None


def build_toy_model(padding_factor: int = 16, threshold: float = -1.0):
    """Return a scripted toy model (see module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch import Tensor, nn

    class ToyBlobModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.padding_factor = padding_factor
            self.num_classes = 1
            self.architecture = "toy"
            self.threshold = threshold
            ax = torch.arange(-6, 7, dtype=torch.float32)
            g = torch.exp(-(ax**2) / (2 * 2.0**2))
            kernel = (g[:, None] * g[None, :]) / (g.sum() ** 2)
            self.register_buffer("kernel", kernel[None, None])

        def forward(
            self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
        ) -> dict[str, Tensor]:
            coarse = F.avg_pool2d(x, 4)
            # Foreground = darker than mean - 1 std, so zero padding (mean grey) is background.
            logits = 8.0 * (self.threshold - coarse)
            prob = torch.sigmoid(logits)
            ctr = F.conv2d(prob, self.kernel, padding=6)
            offsets = torch.zeros(
                (x.shape[0], 2, coarse.shape[2], coarse.shape[3]), device=x.device
            )
            sem = logits
            if render_steps > 0:
                sem = F.interpolate(
                    logits,
                    scale_factor=float(2**render_steps),
                    mode="bilinear",
                    align_corners=False,
                )
            if interpolate_ins:
                ctr = F.interpolate(ctr, scale_factor=4.0, mode="bilinear", align_corners=False)
                offsets = F.interpolate(
                    offsets, scale_factor=4.0, mode="bilinear", align_corners=False
                )
            return {"sem_logits": sem, "ctr_hmp": ctr, "offsets": offsets}

    return torch.jit.script(ToyBlobModel())


@pytest.fixture(scope="session")
def toy_model_file(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("toy") / "toy.pth"
    torch.jit.save(build_toy_model(), str(path))
    return path


@pytest.fixture(scope="session")
def toy_model(toy_model_file):
    from empanada_napari.core.models.loading import load_model

    return load_model(toy_model_file, device="cpu")


def disk_image(shape, centres, radius, background=200, foreground=40, dtype=np.uint8):
    """Bright image with dark disks (EM-like contrast) and their true instance labels."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, background, dtype=np.float64)
    truth = np.zeros(shape, dtype=np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image[inside] = foreground
        truth[inside] = i
    return image.astype(dtype), truth


@pytest.hookimpl(tryfirst=True)  # before -m selects, so that -m "not gui" sees the marker
def pytest_collection_modifyitems(items):
    """Mark the tests that create a QApplication (through their fixtures) as ``gui``."""
    from ._gui import GUI_FIXTURES

    for item in items:
        if GUI_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)


@functools.cache
def _no_display_reason() -> str | None:
    from ._gui import no_display_reason

    return no_display_reason()


@pytest.hookimpl(tryfirst=True)  # before the fixtures that would create the QApplication
def pytest_runtest_setup(item):
    """Skip GUI tests with one clear reason where Qt cannot open windows (else SIGABRT)."""
    if item.get_closest_marker("gui"):
        reason = _no_display_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own registry home, so no test touches the user's cache."""
    monkeypatch.setenv("EMPANADA_NAPARI_HOME", str(tmp_path / "empanada_home"))
    # Docks load no model in the background unless a test asks (widgets/test_widgets_preload.py):
    # a load racing a test's own would make timings and cache counts depend on the order.
    monkeypatch.setenv("EMPANADA_NAPARI_PRELOAD", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def inline_jobs(request, monkeypatch):
    """Docks run their jobs start to finish in the test's thread (``JobPanel.inline``): a
    dock's logic is tested with nothing to wait for. Tests marked ``threaded`` keep the
    worker thread (cancel, progress while a job runs)."""
    from empanada_napari.widgets._jobs import JobPanel

    if request.node.get_closest_marker("threaded") is None:
        monkeypatch.setattr(JobPanel, "inline", True)
    return JobPanel.inline
