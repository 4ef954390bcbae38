"""The benchmark harnesses and the report that renders them into docs/benchmarks.md."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import tifffile
from benchmarks import _common, accuracy, linking, model_speed, ortho_blocks, proofread, report

ROOT = Path(__file__).resolve().parents[1]


def test_ortho_blocks_scores_blocks_against_one_block(toy_model_file):
    crop = tifffile.imread(ROOT / "tests" / "data" / "lucchi_crop_raw.tif")[:, :96, :128]
    result = ortho_blocks.run(crop, (16, 96, 64), [16], model=str(toy_model_file))
    assert result["one_block"]["objects"] >= 3
    row = result["halo 16"]
    assert row["objects"] >= 1 and row["s"] > 0
    assert all(0.0 <= row[k] <= 1.0 for k in ortho_blocks.KEYS)
    assert row["semantic_iou"] > 0.9  # two blocks of a small crop: the masks nearly agree
    assert row["blocks"] == 2 and row["work"] > 1.0  # the halo is seen twice


def test_ortho_blocks_memory_rows_compare_the_two_default_rules():
    rows = ortho_blocks.memory_rows((96, 384, 1024), 2)
    (chosen, halo), (fixed, same_halo) = rows.values()
    assert halo == same_halo and fixed == (160, 160, 160)
    assert chosen[0] == 96 and chosen != fixed  # larger blocks, the thin axis left whole


def test_accuracy_harness_quick(tmp_path, capsys):
    out = tmp_path / "acc.json"
    assert (
        accuracy.main(["--quick", "--modes", "2d,stack", "--min-size", "500", "--json", str(out)])
        == 0
    )
    results = json.loads(out.read_text())
    table = capsys.readouterr().out
    assert "semantic_iou" in table and "stack" in table
    # The bundled model on its held-out crop (see tests/core/models/test_bundled_model.py).
    assert results["2d"]["semantic_iou"] > 0.85 and results["stack"]["semantic_iou"] > 0.85
    assert results["stack"]["n_gt"] == 4 and results["model"] == "Lucchi_Lite_v1"
    # 3D diagnostics (issue 17): merges and splits, and scores without border-cut objects
    # (all 4 touch this small crop's border) or objects the size filter removes by design.
    stack = results["stack"]
    assert stack["merges"] == 0 and stack["merges_2d_separates"] == 0
    assert stack["whole"]["n_gt"] == 0 and stack["whole"]["f1@0.5"] is None
    assert 0 < stack["sized"]["n_gt"] <= 4 and stack["sized"]["f1@0.5"] >= stack["f1@0.5"]
    assert "merges 0" in table and "sized objects" in table


def test_linking_benchmark_times_both_rule_sets(tmp_path, capsys):
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, tifffile.imread(ROOT / "tests" / "data" / "lucchi_crop_raw.tif")[:8])
    out = tmp_path / "linking.json"
    assert linking.main(["--raw", str(raw), "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for name in ("separate", "legacy"):
        assert result[name]["pipeline_s"] > 0 and result[name]["linking_s"] > 0
    assert result["ratio_pipeline"] > 0 and "separate / legacy" in capsys.readouterr().out


def _blocks(text: str) -> dict[str, str]:
    """The content of every figure block of a doc."""
    return dict(re.findall(r"<!-- figure:(\w+) -->\n(.*?)<!-- /figure:\1 -->", text, re.S))


def _outside(text: str) -> str:
    """The doc with the content of every figure block removed (the prose people write)."""
    return re.sub(r"(<!-- figure:(\w+) -->\n).*?(<!-- /figure:\2 -->)", r"\1\3", text, flags=re.S)


def _table_rows(block: str) -> list[list[str]]:
    lines = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_report_quick_rewrites_only_the_blocks(tmp_path):
    doc = tmp_path / "benchmarks.md"
    original = (ROOT / "docs" / "benchmarks.md").read_text()
    doc.write_text(original)
    out = tmp_path / "bench"

    args = ["--quick", "--only", "throughput,memory", "--out", str(out)]
    assert report.main([*args, "--doc", str(doc)]) == 0

    text = doc.read_text()
    assert _outside(text) == _outside(original)
    before, after = _blocks(original), _blocks(text)
    assert set(after) == set(report.FIGURES)
    for name in ("accuracy", "model_speed", "proofread"):  # not run: left as they were
        assert after[name] == before[name]
    git = ["git", "rev-parse", "--short", "HEAD"]
    head = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    for name in ("throughput", "memory"):
        result = json.loads((out / f"{name}.json").read_text())
        header = after[name].splitlines()[0]
        assert result["meta"]["commit"].startswith(head)
        assert f"commit `{result['meta']['commit']}`" in header
        assert f"{os.cpu_count()} cores" in header and "no GPU" in header
        assert f"`{result['command']}`" in header and f"benchmarks.{name}" in result["command"]

    result = json.loads((out / "throughput.json").read_text())
    thr, ortho = result["rows"], result["ortho_rows"]
    stack_table, ortho_table = after["throughput"].rsplit("\n\n| volume", 1)
    rows = _table_rows(stack_table)
    assert len(rows) == len(thr) == 1
    (o_row,) = _table_rows("| volume" + ortho_table)
    assert o_row[0] == "16 x 64 x 64" and len(ortho) == 1
    assert float(o_row[3]) == round(ortho[0]["ortho_s"] / ortho[0]["forward_3_views_s"], 2) > 0
    assert rows[0][:2] == ["8 x 128 x 128", "1"]
    ratio_2d, ratio_stack = float(rows[0][3]), float(rows[0][4])
    assert ratio_2d > 0 and ratio_stack > 0
    assert ratio_stack == round(thr[0]["stack_s"] / thr[0]["forward_s"], 2)
    assert ratio_2d == round(thr[0]["2d_s"] / thr[0]["forward_s"], 2)

    mem = json.loads((out / "memory.json").read_text())["rows"]
    rows = _table_rows(after["memory"])
    assert len(rows) == len(mem) == 1
    voxels = math.prod(mem[0]["shape"])
    assert mem[0]["voxels"] == voxels == 160**3 and rows[0][0] == "160^3"
    assert math.isclose(float(rows[0][1]) * 1e9, voxels, rel_tol=1e-3)
    assert rows[0][2:4] == [str(mem[0]["blocks"]), str(mem[0]["objects"])]
    assert float(rows[0][6]) == mem[0]["peak_rss_gb"] > 0

    # --render-only gives the same blocks from the JSON without running anything.
    again = tmp_path / "again.md"
    again.write_text(original)
    assert report.main(["--render-only", *args, "--doc", str(again)]) == 0
    assert again.read_text() == text


def test_report_failed_figure_keeps_its_block(tmp_path, monkeypatch, capfd):
    bad = dataclasses.replace(report.FIGURES["proofread"], quick=("--no-such-option",))
    monkeypatch.setitem(report.FIGURES, "proofread", bad)
    doc = tmp_path / "benchmarks.md"
    original = (ROOT / "docs" / "benchmarks.md").read_text()
    doc.write_text(original)
    out = tmp_path / "bench"
    out.mkdir()
    stale = {"meta": {}, "command": "old", "size_percentiles": [40, 60]}
    (out / "proofread.json").write_text(json.dumps(stale))  # must not be rendered

    args = ["--quick", "--only", "proofread", "--out", str(out), "--doc", str(doc)]
    assert report.main(args) != 0

    assert doc.read_text() == original
    assert not (out / "proofread.json").exists()
    assert "failed figures: proofread" in capfd.readouterr().err


def test_time_call_is_the_median_after_a_warm_up():
    durations = iter([100.0, 3.0, 1.0, 2.0])  # the warm-up (100) is not counted
    now = [0.0]
    calls = []

    def fn():
        calls.append(1)
        now[0] += next(durations)

    assert _common.time_call(fn, 3, clock=lambda: now[0]) == 2.0
    assert len(calls) == 4
    assert 0.001 <= _common.time_call(lambda: time.sleep(0.001), 2) < 1


def test_markdown_of_cuda_speed_and_two_proofread_runs():
    meta = {"torch_threads": 8}
    row = {"model": "panoptic_deeplab_pr(resnet50)", "note": "MitoNet_v1-size", "params_m": 55.2}
    row |= {"batch": 4, "fp32_s_per_slice": 0.05, "fp16_s_per_slice": 0.02}
    speed = {"meta": meta, "rows": [row]}
    table = model_speed.markdown(speed)
    assert "fp16 s / slice" in table
    assert (
        "| panoptic_deeplab_pr, ResNet-50 (MitoNet_v1-size) | 55.2 M | 4 | 0.05 | 0.02 |" in table
    )

    def run(low, high, ms):
        return {
            "size_percentiles": [low, high],
            "timed_objects": 15,
            "typical_object_voxels": 4029.0,
            "indexed_ms": {"merge": ms, "delete": 0.9},  # no split: a single maximum
            "full_scan_ms": {"merge": 377.4, "delete": 309.0},
        }

    rows = _table_rows(proofread.markdown([run(40, 60, 2.2), run(95, 100, 8.0)]))
    typical = ["typical (40-60th percentile), 15 objects", "4,029", "**2.2** / 377"]
    assert rows[0] == [*typical, "- / -", "**0.9** / 309"]
    assert rows[1][0] == "large (95-100th percentile), 15 objects"


def test_finetune_speed_splits_each_iteration_into_its_phases(capsys):
    """Two tiny iterations on the committed CDeep3M crop: every phase is timed, and the
    phases add up to the iteration (an off-by-one once made the script stop at the first)."""
    import json

    from benchmarks import finetune_speed

    assert (
        finetune_speed.main(["--iterations", "2", "--batch-size", "2", "--patch-size", "64"]) == 0
    )
    rows = [json.loads(line.split(" ", 2)[2]) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert set(row) == {*finetune_speed.PHASES, "total"}
        assert min(row.values()) >= 0
        assert abs(sum(row[k] for k in finetune_speed.PHASES) - row["total"]) < 0.01


@pytest.mark.gui
@pytest.mark.slow
def test_dock_clicks_times_a_first_click_with_and_without_preloading(qapp):
    # Two fresh napari processes (one per preload setting), one click each on the 2D dock.
    from benchmarks import dock_clicks

    result = dock_clicks.run(["2d"], repeats=1, wait=0.5, clicks=1)
    for side in ("preload", "no preload"):
        (row,) = result["2d"][side]["runs"]
        assert row["status"].startswith("Added") and "object" in row["status"]
        assert row["click_s"][0] >= row["segment_s"][0] > 0 and row["show_s"][0] > 0


def test_napari_at_size_table_has_a_row_per_scenario():
    from benchmarks.napari_at_size import SCENARIOS, markdown

    run = {
        "scenario": "region", "volume": list(SCENARIOS["region"][0]), "region": [1000, 1255],
        "memory_gb": 1.5, "plan": "4 blocks", "run_s": 96.0, "peak_run_gb": 2.24,
        "click_s": [4.3, 0.4, 0.7], "rss_after_click_gb": [1.6, 1.62], "undo_exact": True,
        "slice_2d_s": 0.7, "reopened_scale": [5.0, 5.0, 5.0],
    }  # fmt: skip
    table = markdown({"runs": [run, {**run, "scenario": "whole", "region": None}]})
    lines = table.splitlines()
    assert len(lines) == 4 and "slices 1000-1255" in lines[2] and "| all |" in lines[3]
    assert "0.70" in lines[2] and "5 x 5 x 5" in lines[2]
