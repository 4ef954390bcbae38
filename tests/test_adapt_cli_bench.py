"""The ``patches`` CLI, the dataset check behind ``finetune`` and the adapt benchmark harness."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from empanada_napari.cli import main

from .conftest import DATA


def test_patches_pick_appends_and_check_summarises(tmp_path, capsys):
    raw = DATA / "cdeep3m_val_crop_raw.tif"
    args = ["patches", "pick", str(raw), str(tmp_path / "ds"), "--strategy", "random"]
    args += ["-n", "2", "--patch-size", "64", "--device", "cpu"]
    assert main(args) == 0
    assert main(args + ["--seed", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    written = json.loads(out[-1])["written"]
    assert [p.rsplit("/", 1)[-1] for p in written] == [
        "cdeep3m_val_crop_raw_0002.tiff",
        "cdeep3m_val_crop_raw_0003.tiff",
    ]
    image = tifffile.imread(written[0])
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert main(["patches", "check", str(tmp_path / "ds")]) == 0
    assert json.loads(capsys.readouterr().out)["patches"] == 4


def test_finetune_cli_explains_a_bad_dataset(tmp_path, capsys):
    (tmp_path / "ds" / "s" / "images").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "ds" / "s" / "images" / "a.tiff", np.zeros((8, 8), np.uint8))
    code = main(["finetune", "--data", str(tmp_path / "ds"), "--name", "x", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "1 images but no masks" in err and "Traceback" not in err


def test_adapt_benchmark_quick(tmp_path):
    from benchmarks import adapt

    out = tmp_path / "adapt.json"
    argv = ["--quick", "--device", "cpu", "--rounds", "2", "--json", str(out)]
    assert adapt.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m benchmarks.adapt --quick")
    assert [s["strategy"] for s in result["summary"]] == ["random", "uncertain"]
    for run in result["runs"]:
        # Two rounds of 2 patches, the second picked by the first round's model elsewhere.
        assert run["patches"] == 4 and run["finetune_cpu_min"] >= 0
        assert [r["round"] for r in run["rounds"]] == [1, 2]
        effort = run["rounds"][0]["effort"]
        assert effort["changed"] == sum(
            effort[k] for k in ("added", "deleted", "redrawn", "merged", "split")
        )
        assert run["objects_changed"] == sum(r["effort"]["changed"] for r in run["rounds"])
        assert 0 <= run["after"]["f1@0.5"] <= 1
        assert 0 <= run["after"]["components_f1@0.5"] <= 1
        assert 0 <= run["after"]["joined_f1@0.5"] <= 1


def test_adapt_scores_instances_and_components():
    """Touching mitochondria that binary truth cannot separate: the separated instances miss
    the merged true component, the prediction's components match it."""
    from benchmarks.adapt import score_labels

    binary = np.zeros((1, 32, 32), np.uint8)
    binary[0, 4:20, 4:20] = 1
    pred = np.zeros((1, 32, 32), np.int32)
    pred[0, 4:20, 4:9], pred[0, 4:20, 9:14], pred[0, 4:20, 14:20] = 1, 2, 3
    s = score_labels(pred, binary)
    assert s["f1@0.5"] == 0 and s["n_pred"] == 3 and s["n_gt"] == 1
    assert s["components_f1@0.5"] == 1 and s["components_n_pred"] == 1
