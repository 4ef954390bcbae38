"""Loss, finetune and train loops on tiny real crops (tests/data)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile
import torch
import yaml

from empanada_napari.core.errors import Cancelled, InputError, ModelError
from empanada_napari.core.models.architectures import build_model
from empanada_napari.core.models.registry import get_registry
from empanada_napari.core.training import (
    PanopticLoss,
    PatchDataset,
    finetune,
    load_encoder_weights,
    panoptic_targets,
    train,
    write_dataset,
)

from ...conftest import DATA

SMALL = {"width": 8, "decoder_channels": 16, "point_hidden_channels": 16}


@pytest.fixture(scope="module")
def crop():
    raw = tifffile.imread(DATA / "lucchi_crop_raw.tif")
    inst = tifffile.imread(DATA / "lucchi_crop_instances_2d.tif").astype(np.int32)
    return raw, inst


@pytest.fixture
def fixed_dataset(crop):
    raw, inst = crop
    return PatchDataset(
        list(raw[:2]),
        list(inst[:2]),
        patch_size=128,
        augment=False,
        foreground_fraction=1.0,
        samples_per_epoch=4,
        seed=1,
    )


@pytest.fixture
def small_model_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "small.pth"
    torch.jit.save(torch.jit.script(build_model("panoptic_lite", **SMALL).eval()), str(path))
    return path


def test_loss_is_zero_ish_for_perfect_maps_and_positive_otherwise(crop):
    _, inst = crop
    t = panoptic_targets(inst[0])
    assert t["sem"].sum() > 1000  # the crop has mitochondria
    targets = {
        "sem": torch.from_numpy(t["sem"])[None],
        "ctr_hmp": torch.from_numpy(t["ctr_hmp"])[None],
        "offsets": torch.from_numpy(t["offsets"])[None],
    }
    perfect = {
        "sem_logits": (targets["sem"][:, None] * 40 - 20),
        "ctr_hmp": targets["ctr_hmp"].clone(),
        "offsets": targets["offsets"].clone(),
    }
    losses = PanopticLoss()(perfect, targets)
    assert float(losses["total"]) < 1e-6 and "pr" not in losses
    wrong = dict(perfect, offsets=perfect["offsets"] + 2.0)
    # Offsets off by 2 px everywhere: L1 = 2 per foreground pixel, weighted by 0.01.
    assert float(PanopticLoss()(wrong, targets)["l1"]) == pytest.approx(2.0, rel=1e-5)


def test_loss_decreases_on_a_real_crop(fixed_dataset):
    result = train(
        "panoptic_lite",
        fixed_dataset,
        name="tiny",
        arch_kwargs=SMALL,
        iterations=24,
        batch_size=4,
        lr=0.003,
        register=False,
        device="cpu",
    )
    losses = [h["total"] for h in result.history]
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])
    assert {"ce", "mse", "l1", "pr", "lr"} <= set(result.history[0])


def test_finetune_saves_a_changed_torchscript_model_and_registers_it(
    small_model_file, fixed_dataset, tmp_path
):
    original = torch.jit.load(str(small_model_file))
    result = finetune(
        small_model_file,
        fixed_dataset,
        name="tuned",
        output_dir=tmp_path / "out",
        iterations=3,
        batch_size=2,
        device="cpu",
        freeze_encoder=True,
    )
    reloaded = torch.jit.load(str(result.model_path))
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        a, b = original(x, 2, True), reloaded(x, 2, True)
    assert not torch.allclose(a["sem_logits"], b["sem_logits"])
    before, after = dict(original.named_parameters()), dict(reloaded.named_parameters())
    # A frozen encoder is unchanged, BN statistics included; the heads moved.
    for key in before:
        if key.startswith("encoder."):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["center_head.weight"], after["center_head.weight"])
    bn_before = dict(original.named_buffers())["encoder.layer1.0.bn1.running_mean"]
    assert torch.equal(
        bn_before, dict(reloaded.named_buffers())["encoder.layer1.0.bn1.running_mean"]
    )
    config = yaml.safe_load(result.config_path.read_text())
    assert config["model"] == "tuned.pth" and config["padding_factor"] == 32
    assert config["FINETUNE"]["criterion"] == "PanopticLoss"
    assert "tuned" in get_registry().names()


def test_unfreeze_trains_only_the_chosen_stage(small_model_file, fixed_dataset):
    original = dict(torch.jit.load(str(small_model_file)).named_parameters())
    result = finetune(
        small_model_file,
        fixed_dataset,
        name="l4",
        freeze_encoder=True,
        unfreeze="layer4",
        iterations=3,
        batch_size=2,
        register=False,
        device="cpu",
    )
    tuned = dict(result.module.named_parameters())
    changed = {
        k.split(".")[1]
        for k in original
        if k.startswith("encoder.") and not torch.equal(original[k], tuned[k])
    }
    assert changed == {"layer4"}


def test_cancel_keeps_the_best_validated_model_under_a_cancelled_name(
    small_model_file, fixed_dataset, crop, tmp_path
):
    from empanada_napari.core.models.loading import load_model
    from empanada_napari.core.training import TrainingCancelled

    raw, inst = crop
    cancel = threading.Event()

    def progress(it, total, record):
        if it == 2:
            cancel.set()

    with pytest.raises(Cancelled, match="after 2 of 50") as stop:
        finetune(
            small_model_file,
            fixed_dataset,
            name="c",
            output_dir=tmp_path,
            val=([raw[5][:96, :96]], [inst[5][:96, :96]]),
            val_every=1,
            iterations=50,
            batch_size=2,
            progress=progress,
            cancel=cancel,
            device="cpu",
        )
    assert isinstance(stop.value, TrainingCancelled)
    result = stop.value.result
    assert result.cancelled and result.iterations == 2 and len(result.history) == 2
    # Issue 37: the name says it was cancelled, so it is never mistaken for a finished run.
    assert result.name == "c_cancelled" and result.model_path == tmp_path / "c_cancelled.pth"
    loaded = load_model("c_cancelled", "cpu")  # registered, and it loads
    with torch.inference_mode():
        out = loaded.module(torch.zeros(1, 1, 64, 64), 2, True)
    assert out["sem_logits"].shape[-2:] == (64, 64)
    description = result.config["description"]
    assert "Cancelled after 2 of 50 iterations" in description
    assert "post-processing not tuned" in description
    # Finetuning it again does not repeat its sentences (they used to pile up).
    again = finetune(
        "c_cancelled", fixed_dataset, name="c2", iterations=1, batch_size=2, device="cpu",
        register=False, tune=False,
    )  # fmt: skip
    assert again.config["description"].count("finetuned for") == 1
    assert "Cancelled" not in again.config["description"]


def test_a_cancelled_run_never_replaces_an_earlier_cancelled_model(
    small_model_file, fixed_dataset, crop
):
    from empanada_napari.core.training import TrainingCancelled

    registry = get_registry()
    registry.register("k_cancelled", registry.builtin_dir / "MitoNet_v1.yaml")
    raw, inst = crop
    cancel = threading.Event()
    with pytest.raises(TrainingCancelled) as stop:
        finetune(
            small_model_file,
            fixed_dataset,
            name="k",
            val=([raw[5][:96, :96]], [inst[5][:96, :96]]),
            val_every=1,
            iterations=50,
            batch_size=2,
            progress=lambda it, *_: it == 2 and cancel.set(),
            cancel=cancel,
            device="cpu",
        )
    assert stop.value.result.name == "k_cancelled_2"
    assert registry.get("k_cancelled").config["model"].startswith("https://")  # kept


def test_a_registered_name_is_refused_before_training_unless_overwrite(
    small_model_file, fixed_dataset, tmp_path, capsys
):
    # Was: finetuning registered over a model of the same name without a word.
    from empanada_napari.cli import main
    from empanada_napari.core.models.naming import free_name

    registry = get_registry()
    mitonet = registry.builtin_dir / "MitoNet_v1.yaml"  # a download link: nothing fetched
    for name in ("CDeep3M_round1", "run09", "tuned"):
        registry.register(name, mitonet)
    assert free_name("CDeep3M_round1") == "CDeep3M_round2" and free_name("run09") == "run10"
    assert free_name("tuned") == "tuned_2" and free_name("fresh") == "fresh"
    steps = []
    common = {"iterations": 1, "batch_size": 2, "device": "cpu", "tune": False}
    with pytest.raises(InputError, match="already registered.*overwrite=True"):
        finetune(small_model_file, fixed_dataset, name="CDeep3M_round1",
                 progress=lambda *a: steps.append(a), **common)  # fmt: skip
    assert not steps  # refused before the first step
    with pytest.raises(InputError, match="built-in model and is never replaced"):
        finetune(small_model_file, fixed_dataset, name="Lucchi_Lite_v1", overwrite=True, **common)
    # The command line says it with its own options, before reading the dataset.
    args = ["finetune", "--model", str(small_model_file), "--data", str(tmp_path / "none"),
            "--name", "CDeep3M_round1", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "change --name (e.g. to 'CDeep3M_round2'), or add --overwrite" in err, err
    assert main([*args, "--overwrite"]) == 2  # allowed: it goes on to the (missing) dataset
    err = capsys.readouterr().err
    assert "already registered" not in err and "none" in err, err
    # Asked for, the model is replaced.
    finetune(small_model_file, fixed_dataset, name="CDeep3M_round1", overwrite=True, **common)
    assert "finetuned for 1 iterations" in registry.get("CDeep3M_round1").description


def test_cancel_before_the_first_validation_keeps_nothing(
    small_model_file, fixed_dataset, tmp_path
):
    from empanada_napari.core.models.registry import get_registry

    cancel = threading.Event()
    with pytest.raises(Cancelled, match="nothing was kept"):
        finetune(
            small_model_file,
            fixed_dataset,
            name="unchecked",
            output_dir=tmp_path,
            iterations=50,
            batch_size=2,
            progress=lambda it, total, record: it == 2 and cancel.set(),
            cancel=cancel,
            device="cpu",
        )
    assert not list(tmp_path.glob("unchecked*.pth"))
    assert not any(n.startswith("unchecked") for n in get_registry().names())


def test_cancel_before_any_iteration_saves_nothing(small_model_file, fixed_dataset, tmp_path):
    with pytest.raises(Cancelled, match="no model was saved"):
        finetune(
            small_model_file,
            fixed_dataset,
            name="none",
            output_dir=tmp_path,
            iterations=5,
            cancel=lambda: True,
            device="cpu",
        )
    assert not (tmp_path / "none.pth").exists()


def test_validation_keeps_the_best_weights(small_model_file, fixed_dataset, crop):
    raw, inst = crop
    seen = []
    result = finetune(
        small_model_file,
        fixed_dataset,
        name="best",
        val=([raw[5][:96, :96]], [inst[5][:96, :96]]),
        val_every=2,
        iterations=6,
        batch_size=2,
        register=False,
        device="cpu",
        progress=lambda it, total, info: seen.append(dict(info)),
    )
    assert [v["iteration"] for v in result.validation] == [2, 4, 6]
    assert "val_f1@0.5" in seen[1] and "val_f1@0.5" not in seen[0]
    assert all(s["eta_s"] >= 0 for s in seen) and seen[-1]["eta_s"] == 0
    f1 = [v["f1@0.5"] for v in result.validation]
    assert result.best_iteration == result.validation[int(np.argmax(f1))]["iteration"]


def test_train_several_classes(crop):
    raw, inst = crop
    # Class 1 (instances): the mitochondria; class 2 (semantic): a band of the image.
    masks = []
    for m in inst[:2]:
        multi = np.where(m > 0, 1000 + m, 0).astype(np.int32)
        multi[:40][multi[:40] == 0] = 2000
        masks.append(multi)
    from empanada_napari.core.training.store import _ClassTargets

    base = PatchDataset(list(raw[:2]), masks, patch_size=64, augment=False, samples_per_epoch=2)
    data = _ClassTargets(base, things=[1])
    _, sample = data[0]
    assert set(np.unique(sample["sem"].numpy())) <= {0.0, 1.0, 2.0}
    result = train(
        "panoptic_lite",
        data,
        name="two",
        arch_kwargs=SMALL,
        classes={"mito": "instance", "band": "semantic"},
        iterations=2,
        batch_size=2,
        register=False,
        device="cpu",
    )
    assert result.config["class_names"] == {1: "mito", 2: "band"}
    assert result.config["thing_list"] == [1] and result.config["labels"] == [1, 2]
    with torch.inference_mode():
        out = result.module(torch.zeros(1, 1, 64, 64), 2, True)
    assert out["sem_logits"].shape[1] == 3  # background + two classes


@pytest.mark.parametrize(
    "params, message",
    [
        ({"unfreeze": "layer9"}, "Unknown encoder stage"),
        ({"iterations": 0}, "iterations"),
        ({"lr": 5.0}, "lr"),
    ],
)
def test_bad_training_settings(small_model_file, fixed_dataset, params, message):
    with pytest.raises(InputError, match=message):
        finetune(small_model_file, fixed_dataset, name="x", register=False, **params)


def test_unknown_architecture(fixed_dataset):
    with pytest.raises(InputError, match="panoptic_lite"):
        train("unet_magic", fixed_dataset, name="x", register=False)


def test_encoder_weights_load_with_prefixes_and_norms(tmp_path):
    source = build_model("panoptic_lite", **SMALL)
    state = {f"module.{k}": v.clone() + 1.0 for k, v in source.encoder.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 64)  # classifier weights are dropped
    ckpt = tmp_path / "cem.pth.tar"
    torch.save({"state_dict": state, "norms": {"mean": 0.5, "std": 0.2}}, ckpt)
    target = build_model("panoptic_lite", **SMALL)
    norms = load_encoder_weights(target, ckpt)
    assert norms == {"mean": 0.5, "std": 0.2}
    for k, v in target.encoder.state_dict().items():
        assert torch.equal(v, state[f"module.{k}"]), k
    wrong = build_model("panoptic_lite", width=16, decoder_channels=16)
    with pytest.raises(ModelError):
        load_encoder_weights(wrong, ckpt)


def test_cli_finetune_on_a_dataset_folder(small_model_file, crop, tmp_path, capsys):
    import json

    from empanada_napari.cli import main

    raw, inst = crop
    write_dataset(tmp_path / "ds", list(raw[:3]), list(inst[:3]), source="lucchi")
    (tmp_path / "ds" / "lucchi" / "images" / "Thumbs.db").write_bytes(b"x")
    code = main(
        [
            "finetune",
            "--model",
            str(small_model_file),
            "--data",
            str(tmp_path / "ds"),
            "--name",
            "cli_tuned",
            "--iterations",
            "2",
            "--batch-size",
            "2",
            "--patch-size",
            "128",
            "--device",
            "cpu",
            "--no-progress",
            "--val-data",
            str(tmp_path / "ds"),
            "--val-every",
            "2",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["iterations"] == 2 and "f1@0.5" in report["validation"][0]
    assert "cli_tuned" in get_registry().names()


def test_finetune_accepts_the_default_model_name(fixed_dataset):
    result = finetune(
        "default",
        fixed_dataset,
        name="from_default",
        iterations=1,
        batch_size=2,
        register=False,
        device="cpu",
    )
    assert result.config["padding_factor"] == 32
    assert "Lucchi_Lite_v1 finetuned" in result.config["description"]


def test_cli_train_refuses_a_pickle_payload_as_pretrained(crop, tmp_path, capsys):
    from empanada_napari.cli import main

    from ...core.models.test_model_files import _Payload

    raw, inst = crop
    write_dataset(tmp_path / "ds", list(raw[:2]), list(inst[:2]), source="lucchi")
    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "extra": _Payload(marker)}, payload)
    args = ["--data", str(tmp_path / "ds"), "--name", "evil", "--iterations", "1"]
    code = main(["train", *args, "--pretrained", str(payload), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and not marker.exists()
    lines = err.strip().splitlines()  # the dataset summary, then a one-line error
    assert lines[-1].startswith("error:") and "not a plain checkpoint of tensors" in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert "evil" not in get_registry().names()
