"""The accuracy harness runs end to end on the real crop in tests/data (quick mode)."""

from __future__ import annotations

import json

from benchmarks import accuracy


def test_accuracy_harness_quick(tmp_path, capsys):
    out = tmp_path / "acc.json"
    assert (
        accuracy.main(["--quick", "--modes", "2d,stack", "--min-size", "500", "--json", str(out)])
        == 0
    )
    results = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "semantic_iou" in table and "stack" in table
    # The bundled model on its held-out crop (see tests/test_bundled_model.py).
    assert results["2d"]["semantic_iou"] > 0.85 and results["stack"]["semantic_iou"] > 0.85
    assert results["stack"]["n_gt"] == 4 and results["model"] == "Lucchi_Lite_v1"
