"""Which bundled model fits a microscope, without ground truth (issue 36), on real crops."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from empanada_napari.cli import main
from empanada_napari.core.quality import UNSURE_BELOW, choose_model, estimate_quality

from ..conftest import DATA


@pytest.fixture(scope="module")
def crops() -> dict[str, np.ndarray]:
    return {
        "lucchi": tifffile.imread(DATA / "lucchi_crop_raw.tif")[:4],  # FIB-SEM, held out
        "fafb": tifffile.imread(DATA / "fafb_crop_raw.tif"),  # serial-section TEM, held out
    }


def test_flip_agreement_tells_the_fitting_model_apart(crops):
    # Measured on these crops: Lucchi v1 0.82 / v2 0.87 (both fit: F1 0.83 / 0.86), fafb
    # v1 0.27 (F1 0.12) / v2 0.76 (F1 0.74).
    v1 = estimate_quality(crops["fafb"], "Lucchi_Lite_v1", device="cpu")
    v2 = estimate_quality(crops["fafb"], "EM_Lite_v2", device="cpu")
    fib = estimate_quality(crops["lucchi"], "Lucchi_Lite_v1", device="cpu")
    assert v2.agreement > v1.agreement + 0.2
    assert v1.unsure and not v2.unsure and not fib.unsure
    assert v1.agreement < UNSURE_BELOW <= min(v2.agreement, fib.agreement)
    assert len(v1.slices) >= 1
    chosen, estimates = choose_model(crops["fafb"], ["Lucchi_Lite_v1", "EM_Lite_v2"], device="cpu")
    assert chosen == "EM_Lite_v2" and estimates[0].model == "EM_Lite_v2"


def test_a_finetuned_model_s_views_are_scored_each_not_averaged(crops):
    # A model whose tuned settings average over flips must still show its views' disagreement.
    from dataclasses import replace

    from empanada_napari.core.inference.engine import Engine2D

    plain = Engine2D("Lucchi_Lite_v1", "cpu")
    averaging = Engine2D(plain.model, settings=replace(plain.settings, tta=True))
    a = estimate_quality(crops["fafb"], plain).agreement
    b = estimate_quality(crops["fafb"], averaging).agreement
    assert b < 0.99 and abs(a - b) < 1e-6


def test_models_check_and_auto_on_the_command_line(crops, tmp_path, capsys):
    image = tmp_path / "fafb.tif"
    tifffile.imwrite(image, crops["fafb"])
    assert main(["models", "check", str(image), "--models", "Lucchi_Lite_v1,EM_Lite_v2"]) == 0
    out = capsys.readouterr().out
    assert "model EM_Lite_v2: flipped views agree best" in out and "Lucchi_Lite_v1" in out
    out_tif = tmp_path / "labels.tif"
    args = ["segment", str(image), "-o", str(out_tif), "--model", "auto", "--no-progress"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert '"model": "EM_Lite_v2"' in captured.out and "agree best" in captured.err
