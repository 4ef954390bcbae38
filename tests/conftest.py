"""Shared fixtures.

``toy_model_file`` is a tiny TorchScript model that follows the MitoNet contract exactly
(same forward signature, keys, resolutions and render-step semantics) with hand-set weights:
dark pixels are foreground, the centre heat-map is a Gaussian blur of the foreground
probability (so it peaks at the middle of each round blob) and all offsets are zero. It lets
the engine be tested with predictable answers. Accuracy on real EM is tested with real models
and real crops elsewhere, never with this toy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from .https_server import certificate, server  # noqa: F401 - fixtures for download tests

DATA = Path(__file__).parent / "data"


def _pin_singletons(extra: int = 1_000_000) -> None:
    """Keep ``None``/``True``/``False`` alive for the whole test session on Python < 3.12.

    In this environment (napari 0.9.2 with PySide6 6.12 or PyQt5 5.15, psygnal 0.15-0.16 on
    Python 3.11) some C extension drops a reference to these singletons on Qt/psygnal event
    emissions: a suite that opens many viewers then aborts with 'Fatal Python error:
    none_dealloc'. Compiled psygnal is one source (its pure-Python build leaks less) but not
    the only one. Python 3.12 made the singletons immortal; on 3.11 extra references that
    are never released keep the count above zero. Tests only: the library does not do this.
    """
    import ctypes
    import sys

    if sys.version_info >= (3, 12):
        return
    for obj in (None, True, False):
        for _ in range(extra):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


_pin_singletons()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


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


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own registry home, so no test touches the user's cache."""
    monkeypatch.setenv("EMPANADA_NAPARI_HOME", str(tmp_path / "empanada_home"))
    os.environ.setdefault("OMP_NUM_THREADS", "2")
