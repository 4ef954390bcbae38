"""Tests of the network architectures: output contract, TorchScript, batching, encoder names."""

import pytest
import torch
from torch import nn

from empanada_napari.core.models.architectures import (
    ARCHITECTURES,
    adapt_resnet_state_dict,
    build_model,
    count_parameters,
    encoder_stage_modules,
    encoder_stages,
    list_architectures,
    point_sample,
    set_encoder_trainable,
)
from empanada_napari.core.models.architectures.resnet import build_resnet

# torch 2.x deprecates TorchScript in favour of torch.export, but the model files are TorchScript
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

ARCHS = ["panoptic_deeplab_pr", "panoptic_bifpn_pr", "panoptic_lite"]
# small but complete configurations, so the whole file stays fast on two CPU cores
SMALL: dict[str, dict] = {
    "panoptic_deeplab_pr": {"encoder": "resnet18"},
    "panoptic_bifpn_pr": {"encoder": "resnet18", "fpn_channels": 64},
    "panoptic_lite": {},
}
PADDING = {"panoptic_deeplab_pr": 16, "panoptic_bifpn_pr": 128, "panoptic_lite": 32}
KEYS = {"sem_logits", "ctr_hmp", "offsets"}


def _small(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, **{**SMALL[arch], **kwargs})


def _randomise_bn(model: nn.Module) -> None:
    # non-trivial BatchNorm statistics make eval-mode outputs less degenerate than at init
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.fixture(scope="module")
def scripted() -> dict[str, torch.jit.ScriptModule]:
    return {a: torch.jit.script(_small(a).eval()) for a in ARCHS}


def test_registry_and_errors() -> None:
    assert sorted(ARCHITECTURES) == list_architectures() == sorted(ARCHS)
    with pytest.raises(ValueError, match="panoptic_lite"):
        build_model("unet")
    with pytest.raises(ValueError, match="resnet50"):
        build_model("panoptic_deeplab_pr", encoder="resnet101")
    with pytest.raises(ValueError, match="resnet18"):
        build_model("panoptic_lite", encoder="resnet50")
    assert encoder_stages() == ["stem", "layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("arch", ARCHS)
def test_script_roundtrip_and_shapes(arch: str, scripted, tmp_path) -> None:
    model = scripted[arch]
    path = tmp_path / f"{arch}.pt"
    torch.jit.save(model, str(path))
    loaded = torch.jit.load(str(path)).eval()
    assert loaded.architecture == arch
    assert loaded.padding_factor == PADDING[arch]
    assert loaded.num_classes == 1
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        before, after = model(x), loaded(x)
        assert set(before) == KEYS == set(after)
        for k in KEYS:
            assert after[k].dtype == torch.float32
            torch.testing.assert_close(before[k], after[k], rtol=0, atol=1e-6)
        for steps in (0, 1, 2, 3):
            for interp in (True, False):
                out = loaded(x, render_steps=steps, interpolate_ins=interp)
                side = 32 * 2**steps
                assert out["sem_logits"].shape == (1, 1, side, side)
                ins = 128 if interp else 32
                assert out["ctr_hmp"].shape == (1, 1, ins, ins)
                assert out["offsets"].shape == (1, 2, ins, ins)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_equals_single(arch: str) -> None:
    model = _small(arch).eval()
    _randomise_bn(model)
    x = torch.randn(3, 1, 128, 128)
    with torch.no_grad():
        for steps in (2, 3):  # 128^2 and 256^2 pixels: more than the 8096 refined points
            batched = model(x, render_steps=steps)
            for i in range(3):
                single = model(x[i : i + 1], render_steps=steps)
                for k in KEYS:
                    torch.testing.assert_close(batched[k][i : i + 1], single[k], rtol=0, atol=1e-4)


def test_batched_equals_single_multiclass() -> None:
    model = _small("panoptic_lite", num_classes=3).eval()
    _randomise_bn(model)
    x = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        batched = model(x, render_steps=2)
        assert batched["sem_logits"].shape == (2, 3, 96, 64)
        for i in range(2):
            single = model(x[i : i + 1], render_steps=2)
            torch.testing.assert_close(
                batched["sem_logits"][i : i + 1], single["sem_logits"], rtol=0, atol=1e-4
            )


@pytest.mark.parametrize(
    ("arch", "kwargs", "factor", "size"),
    [
        ("panoptic_deeplab_pr", {}, 16, (48, 80)),
        ("panoptic_deeplab_pr", {"output_stride": 32}, 32, (64, 96)),
        ("panoptic_deeplab_pr", {"output_stride": 8}, 8, (40, 56)),
        ("panoptic_bifpn_pr", {}, 128, (128, 256)),
        ("panoptic_lite", {}, 32, (64, 96)),
    ],
)
def test_padding_factor_multiples(arch: str, kwargs: dict, factor: int, size: tuple) -> None:
    model = _small(arch, **kwargs).eval()
    assert model.padding_factor == factor
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(1, 1, h, w), render_steps=2, interpolate_ins=False)
    assert out["sem_logits"].shape == (1, 1, h, w)
    assert out["ctr_hmp"].shape == (1, 1, h // 4, w // 4)
    assert out["offsets"].shape == (1, 2, h // 4, w // 4)


@pytest.mark.slow  # full-size ResNet-34/50 models: tens of seconds on 2 cores
def test_parameter_counts() -> None:
    counts = {
        "panoptic_deeplab_pr/resnet50": count_parameters(build_model("panoptic_deeplab_pr")),
        "panoptic_bifpn_pr/resnet50": count_parameters(build_model("panoptic_bifpn_pr")),
        "panoptic_lite": count_parameters(build_model("panoptic_lite")),
        "panoptic_lite/no-pointrend": count_parameters(
            build_model("panoptic_lite", pointrend=False)
        ),
    }
    for name, n in counts.items():
        print(f"{name}: {n / 1e6:.2f} M parameters")
    assert 40e6 < counts["panoptic_deeplab_pr/resnet50"] < 70e6
    assert 20e6 < counts["panoptic_bifpn_pr/resnet50"] < 35e6
    assert 1e6 < counts["panoptic_lite"] <= 6e6
    assert counts["panoptic_lite"] * 4 <= 25e6  # float32 weights in bytes


@pytest.mark.slow  # full-size ResNet-34/50 models: tens of seconds on 2 cores
@pytest.mark.parametrize("encoder", ["resnet34", "resnet50"])
def test_deeplab_encoders_script(encoder: str) -> None:
    model = torch.jit.script(build_model("panoptic_deeplab_pr", encoder=encoder).eval())
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 64), render_steps=1, interpolate_ins=False)
    assert out["sem_logits"].shape == (1, 1, 32, 32)
    assert out["offsets"].shape == (1, 2, 16, 16)
    assert model.encoder_name == encoder


@pytest.mark.parametrize("arch", ARCHS)
def test_training_outputs_and_gradients(arch: str) -> None:
    model = _small(arch, train_num_points=200).train()
    x = torch.randn(2, 1, 128, 128)
    out = model(x)
    assert set(out) == KEYS | {"point_logits", "point_coords"}
    assert out["sem_logits"].shape == (2, 1, 32, 32)
    assert out["ctr_hmp"].shape == (2, 1, 128, 128)
    assert out["offsets"].shape == (2, 2, 128, 128)
    assert out["point_logits"].shape == (2, 1, 200)
    coords = out["point_coords"]
    assert coords.shape == (2, 200, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    loss = sum(out[k].pow(2).mean() for k in ("sem_logits", "ctr_hmp", "offsets", "point_logits"))
    loss.backward()
    for name in ("encoder.conv1", "encoder.layer4", "semantic_head", "center_head", "offset_head"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
    pr = [p.grad for n, p in model.named_parameters() if n.startswith("pointrend.")]
    assert pr and all(g is not None and torch.isfinite(g).all() for g in pr)


def test_training_scripted_and_without_pointrend() -> None:
    model = torch.jit.script(_small("panoptic_lite", pointrend=False))
    model.train()
    out = model(torch.randn(2, 1, 64, 64))
    assert set(out) == KEYS and out["sem_logits"].shape == (2, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        sem = model(torch.randn(1, 1, 64, 64), render_steps=3)["sem_logits"]
    assert sem.shape == (1, 1, 128, 128)
    # the number of training points can be changed on a scripted model
    lite = torch.jit.script(_small("panoptic_lite"))
    lite.train()
    lite.train_num_points = 64
    out = lite(torch.randn(1, 1, 64, 64))
    assert out["point_logits"].shape == (1, 1, 64) and out["point_coords"].shape == (1, 64, 2)


def _torchvision_resnet50_keys() -> list[str]:
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in bn]
    for stage, blocks in enumerate([3, 4, 6, 3], start=1):
        for b in range(blocks):
            pre = f"layer{stage}.{b}"
            for i in (1, 2, 3):
                keys.append(f"{pre}.conv{i}.weight")
                keys += [f"{pre}.bn{i}.{s}" for s in bn]
            if b == 0:
                keys.append(f"{pre}.downsample.0.weight")
                keys += [f"{pre}.downsample.1.{s}" for s in bn]
    return keys


@pytest.mark.slow  # full-size ResNet-34/50 models: tens of seconds on 2 cores
def test_resnet50_torchvision_state_dict() -> None:
    ref = _torchvision_resnet50_keys()
    encoder = build_model("panoptic_deeplab_pr").encoder
    sd = encoder.state_dict()
    assert sorted(sd) == sorted(ref)
    assert sd["conv1.weight"].shape == (64, 1, 7, 7)
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sd["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    # a torchvision-style checkpoint with its own keys loads strictly
    fresh = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in sd.items()}
    encoder.load_state_dict({k: fresh[k] for k in ref})
    assert torch.all(encoder.layer4[2].bn3.running_mean == 0.5)
    # an RGB checkpoint with a wrapper prefix and a classifier adapts to the 1-channel stem
    rgb = {f"module.{k}": v for k, v in fresh.items()}
    rgb["module.conv1.weight"] = torch.ones(64, 3, 7, 7)
    rgb["module.fc.weight"] = torch.zeros(1000, 2048)
    encoder.load_state_dict(adapt_resnet_state_dict(rgb))
    assert torch.all(encoder.conv1.weight == 3.0)


def test_dilated_basicblock_strides() -> None:
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        plain = [f.shape[-1] for f in build_resnet("resnet18").eval()(x)]
        os16 = build_resnet("resnet18", output_stride=16).eval()
        os8 = build_resnet("resnet34", output_stride=8).eval()
        s16 = [f.shape[-1] for f in os16(x)]
        s8 = [f.shape[-1] for f in os8(x)]
    assert plain == [16, 8, 4, 2]
    assert s16 == [16, 8, 4, 4]  # layer4 at stride 16
    assert s8 == [16, 8, 8, 8]
    assert os16.layer4[1].conv2.dilation == (2, 2)
    assert os8.layer4[1].conv2.dilation == (4, 4)
    # dilation changes no parameter shape: a stride-32 checkpoint loads
    os16.load_state_dict(build_resnet("resnet18").state_dict())


def test_encoder_stage_modules_on_scripted() -> None:
    model = torch.jit.script(_small("panoptic_lite"))
    stages = encoder_stage_modules(model)
    assert list(stages) == encoder_stages()
    for name in ("stem", "layer1"):
        for m in stages[name]:
            for p in m.parameters():  # ScriptModules do not support requires_grad_()
                p.requires_grad_(False)
    for name, p in model.named_parameters():
        frozen = name.startswith(("encoder.conv1", "encoder.bn1", "encoder.layer1"))
        assert p.requires_grad is not frozen, name
    # the helper also works on the scripted model, including BatchNorm train/eval state
    model.train()
    assert set_encoder_trainable(model, ["layer4"]) == ["stem", "layer1", "layer2", "layer3"]
    modules = dict(model.named_modules())
    assert not modules["encoder.layer3.0.bn1"].training
    assert modules["encoder.layer4.0.bn1"].training and modules["semantic_head"].training
    assert modules["encoder.layer4.0.conv1"].weight.requires_grad
    assert not modules["encoder.layer2.0.conv1"].weight.requires_grad
    running = modules["encoder.layer3.0.bn1"].running_mean.clone()
    model(torch.randn(2, 1, 64, 64))
    assert torch.equal(running, modules["encoder.layer3.0.bn1"].running_mean)
    # the helper freezes everything but the named stages (and fixes their BN statistics)
    eager = _small("panoptic_bifpn_pr").train()
    frozen = set_encoder_trainable(eager, ["layer3", "layer4"])
    assert frozen == ["stem", "layer1", "layer2"]
    assert not eager.encoder.layer2[0].conv1.weight.requires_grad
    assert not eager.encoder.layer2.training and eager.encoder.layer3.training
    assert eager.encoder.layer4[0].conv1.weight.requires_grad
    assert eager.bifpn.p6[0].weight.requires_grad


def test_point_sample_convention() -> None:
    img = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    rows = torch.tensor([[0, 3, 2], [1, 0, 3]])
    cols = torch.tensor([[0, 4, 1], [2, 3, 0]])
    coords = torch.stack([(cols + 0.5) / 5, (rows + 0.5) / 4], dim=2)  # (x, y) pixel centres
    out = point_sample(img, coords)
    assert out.shape == (2, 3, 3)
    for n in range(2):
        expected = img[n][:, rows[n], cols[n]]
        torch.testing.assert_close(out[n], expected)
    # off-centre points: nearest picks the pixel, bilinear interpolates its neighbours
    near = coords + torch.tensor([0.3 / 5, -0.2 / 4])
    torch.testing.assert_close(point_sample(img, near.clamp(0, 1), mode="nearest")[0], out[0])
    mid = torch.tensor([[[1.0 / 5, 0.5 / 4]]])  # halfway between pixels (0, 0) and (0, 1)
    torch.testing.assert_close(point_sample(img[:1], mid)[0, 0], torch.tensor([0.5]))


def test_one_record_per_architecture_feeds_builder_and_cli() -> None:
    from empanada_napari.cli import build_parser
    from empanada_napari.core.models.architectures import compact, list_encoders, resnet
    from empanada_napari.core.models.catalog import ARCHITECTURES as RECORDS

    assert RECORDS["panoptic_deeplab_pr"].encoders == resnet.ENCODERS
    assert RECORDS["panoptic_lite"].encoders == compact.LITE_ENCODERS
    for name, record in RECORDS.items():
        assert list_encoders(name) == list(record.encoders)
        assert record.default_encoder in record.encoders
        assert issubclass(record.model_class(), nn.Module)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    choices = {a.dest: a.choices for a in train._actions}
    assert list(choices["architecture"]) == list(RECORDS)
    assert set(choices["encoder"]) == {e for r in RECORDS.values() for e in r.encoders}
