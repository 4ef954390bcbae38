"""Post-processing settings tuned on the corrected patches at finetuning (issue 12): chosen
on real patches, stored in the model's config, used by the engine and the CLI unless the
user sets them, refused when malformed."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import yaml

from empanada_napari.core.errors import InputError, ModelError
from empanada_napari.core.inference.engine import Engine2D
from empanada_napari.core.inference.postprocess import remove_small
from empanada_napari.core.models.config import validate_config
from empanada_napari.core.models.loading import load_model
from empanada_napari.core.settings import InferenceSettings, model_recommendations
from empanada_napari.core.training import PatchDataset, finetune
from empanada_napari.core.training.tuning import tune_settings

from ...conftest import DATA


@pytest.fixture(scope="module")
def sbem():
    """The CDeep3M crop (another microscope than the bundled model's): 2D instances."""
    from skimage.measure import label

    raw = tifffile.imread(DATA / "cdeep3m_val_crop_raw.tif")
    binary = tifffile.imread(DATA / "cdeep3m_val_crop_mito_binary.tif")
    return raw, np.stack([label(b > 0, connectivity=1) for b in binary]).astype(np.int32)


def _finetune_once(dataset, name: str, **options):
    """One iteration of finetuning the bundled model on the CPU, not registered."""
    return finetune(
        "default",
        dataset,
        name=name,
        iterations=1,
        batch_size=2,
        device="cpu",
        register=False,
        **options,
    )


def test_remove_small_drops_only_small_ids():
    labels = np.zeros((6, 6), np.uint32)
    labels[0:3, 0:3] = 10001  # 9 px
    labels[4:6, 4:6] = 10002  # 4 px
    out = remove_small(labels, 5)
    assert out.dtype == labels.dtype
    assert (out[0:3, 0:3] == 10001).all() and not out[4:6, 4:6].any()
    assert np.array_equal(remove_small(labels, 4), labels)


def test_tuning_on_real_patches_scores_what_the_engine_then_gives(sbem):
    raw, inst = sbem
    model = load_model("default", "cpu")
    plain = tune_settings(model, list(raw), list(inst), flips=False)
    assert plain.settings["tta"] is False
    # Scored on the same outputs, the defaults are among the candidates.
    assert plain.score >= plain.default_score
    result = tune_settings(model, list(raw), list(inst))
    assert result.settings["tta"] is True  # flips kept on, the grid scored on their outputs
    assert result.n_objects >= 20 and result.n_images == len(raw)
    assert result.default_score == plain.default_score  # both: the defaults, no flips
    chosen = InferenceSettings(**result.settings)
    # The score the tuning reports is the one inference with those settings (flips
    # averaged) gives.
    from empanada_napari.core.training.tuning import _pooled_f1

    pred = [Engine2D(model, settings=chosen).segment(img) for img in raw]
    assert _pooled_f1(pred, list(inst)) == pytest.approx(result.score)


def test_too_few_objects_or_no_images_are_refused(sbem):
    raw, inst = sbem
    model = load_model("default", "cpu")
    with pytest.raises(InputError, match="at least 20"):
        tune_settings(model, [raw[0][:64, :64]], [inst[0][:64, :64]])
    with pytest.raises(InputError, match="as many"):
        tune_settings(model, [], [])
    with pytest.raises(InputError, match="2D"):
        tune_settings(model, [raw], [inst])


def test_finetune_stores_the_settings_and_inference_uses_them(sbem, tmp_path):
    raw, inst = sbem
    dataset = PatchDataset(list(raw), list(inst), patch_size=128, samples_per_epoch=2, seed=0)
    seen = []
    result = _finetune_once(
        dataset,
        "tuned",
        output_dir=tmp_path,
        progress=lambda done, total, info: seen.append(dict(info)),
    )
    # The tuning stage is announced with an iteration record's keys (callers read them).
    assert "stage" in seen[-1] and seen[-1]["eta_s"] == 0 and seen[-1]["iteration"] == 1
    tuned = result.config["inference_settings"]
    assert set(tuned) <= {
        "confidence_thr",
        "center_confidence_thr",
        "min_distance_object_centers",
        "absorb_fragments",
        "min_area",
        "tta",
    }
    assert "Post-processing tuned on" in result.config["description"]
    saved = yaml.safe_load(result.config_path.read_text())
    assert saved["inference_settings"] == tuned
    engine = Engine2D(str(result.config_path), device="cpu")
    for key, value in tuned.items():
        assert getattr(engine.settings, key) == value
    # Explicit settings win over the model's.
    assert Engine2D(engine.model, settings=InferenceSettings()).settings == InferenceSettings()
    assert Engine2D(engine.model, min_area=7).settings.min_area == 7

    plain = _finetune_once(dataset, "plain", tune=False)
    assert "inference_settings" not in plain.config


def test_few_corrected_objects_keep_the_defaults_and_say_so(sbem):
    raw, inst = sbem
    small = [r[:96, :96] for r in raw[:1]], [m[:96, :96] for m in inst[:1]]
    dataset = PatchDataset(*small, patch_size=64, samples_per_epoch=2, seed=0)
    result = _finetune_once(dataset, "few")
    assert "inference_settings" not in result.config
    assert "Post-processing not tuned" in result.config["description"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"tile_size": 256}, "unknown key"),
        ({"confidence_thr": 1.5}, "confidence_thr"),
        ({"min_area": -1}, "min_area"),
        # A string is truthy: "no" must not turn averaging over flips on.
        ({"tta": "no"}, "tta must be true or false"),
        ({"absorb_fragments": None}, "absorb_fragments must be true or false"),
        ("fast", "mapping"),
    ],
)
def test_malformed_tuned_settings_in_a_config_are_refused(value, message):
    with pytest.raises(InputError, match=message):
        model_recommendations({"inference_settings": value})
    config = {
        "model": "m.pth",
        "norms": {"mean": 0.5, "std": 0.1},
        "padding_factor": 32,
        "inference_settings": value,
    }
    with pytest.raises(ModelError, match=message):
        validate_config(config, "m.yaml")


def test_cli_flags_win_over_the_model_settings_and_the_rest_follow_the_model():
    from empanada_napari.cli import _settings_from_args, _with_model_settings, build_parser

    args = build_parser().parse_args(["segment", "in.tif", "-o", "out.tif", "--confidence", "0.7"])
    settings = _settings_from_args(args)["inference"]
    assert settings == InferenceSettings(confidence_thr=0.7)  # nothing given: defaults
    config = {"inference_settings": {"confidence_thr": 0.3, "min_area": 200}}
    merged = _with_model_settings(settings, args, config)
    assert merged.confidence_thr == 0.7 and merged.min_area == 200
    off = build_parser().parse_args(["segment", "x.tif", "-o", "y.tif", "--no-absorb-fragments"])
    config = {"inference_settings": {"absorb_fragments": True}}
    base = _settings_from_args(off)["inference"]
    assert _with_model_settings(base, off, config).absorb_fragments is False


def test_segment_volume_uses_the_tuned_settings_unless_given(sbem):
    """The library's volume entry point follows the model like the engine and the CLI."""
    from dataclasses import replace

    from empanada_napari.core import segment_volume

    raw, _ = sbem
    cached = load_model("default", "cpu")
    model = replace(cached, config=dict(cached.config, inference_settings={"confidence_thr": 0.95}))
    volume = np.stack([raw[0]] * 3)
    sizes = {"min_size": 0, "min_extent": 1}
    tuned = segment_volume(volume, model, mode="stack", **sizes)
    given = segment_volume(volume, model, mode="stack", confidence_thr=0.5, **sizes)
    plain = segment_volume(volume, model, mode="stack", inference=InferenceSettings(), **sizes)
    assert np.array_equal(given, plain)
    assert 0 < (tuned > 0).sum() < 0.9 * (plain > 0).sum()
