"""The model contract is checked once, at registration and at load, with one clear message.

Each crafted TorchScript module below breaks one rule of the MitoNet contract; registering it,
loading it, or passing it to ``segment --model`` must name that rule (never a KeyError deep in
the engine, never a silent empty result).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from empanada_napari.cli import main
from empanada_napari.core.errors import ModelError
from empanada_napari.core.models.loading import LoadedModel, load_model
from empanada_napari.core.models.registry import ModelRegistry

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

NORMS = {"mean": 0.57571, "std": 0.12765}


class _Good(torch.nn.Module):
    """Smallest model that follows the contract (full-resolution outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(1, 4, kernel_size=1)

    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        y = self.head(x)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:2], "offsets": y[:, 2:4]}


class _OneArgument(_Good):
    def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        y = self.head(x)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:2], "offsets": y[:, 2:4]}


class _MissingKey(_Good):
    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        y = self.head(x)
        return {"semantic": y[:, 0:1], "ctr_hmp": y[:, 1:2], "offsets": y[:, 2:4]}


class _WrongRank(_Good):
    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        y = self.head(x)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:2], "offsets": y[:, 2]}


class _WrongChannels(_Good):
    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        y = self.head(x)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:3], "offsets": y[:, 2:4]}


class _HalfResolution(_Good):
    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        y = F.avg_pool2d(self.head(x), 2)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:2], "offsets": y[:, 2:4]}


class _NotFinite(_Good):
    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        y = self.head(x)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:2] / 0.0, "offsets": y[:, 2:4]}


class _NotADict(_Good):
    def forward(self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True) -> Tensor:  # type: ignore[override]
        return self.head(x)


class _Fails(_Good):
    def forward(
        self, x: Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, Tensor]:
        if x.shape[-1] < 4096:
            raise RuntimeError("this model only runs on huge tiles")
        y = self.head(x)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:2], "offsets": y[:, 2:4]}


BREACHES = [
    (_OneArgument, "forward takes \\(x\\)"),
    (_MissingKey, "output lacks 'sem_logits'"),
    (_WrongRank, "'offsets' has shape \\(1, 64, 64\\)"),
    (_WrongChannels, "'ctr_hmp' has 2 channels; expected 1"),
    (_HalfResolution, "'sem_logits' has shape \\(1, 1, 32, 32\\)"),
    (_NotFinite, "'ctr_hmp' has NaN or infinite values"),
    (_NotADict, "returned Tensor"),
    (_Fails, "failed on a test input.*huge tiles"),
]


def _save(cls, path):
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(cls().eval()), str(path))
    return path


def _config(model, **extra) -> dict:
    config = {"model": str(model), "padding_factor": 16, "norms": dict(NORMS)}
    config.update(extra)
    return config


@pytest.mark.parametrize(("cls", "message"), BREACHES, ids=[c.__name__ for c, _ in BREACHES])
def test_each_breach_is_refused_at_registration_and_load(tmp_path, cls, message):
    path = _save(cls, tmp_path / "bad.pth")
    registry = ModelRegistry(tmp_path / "home")
    with pytest.raises(ModelError, match=message):
        registry.register("bad", _config(path))
    assert "bad" not in registry.names()
    assert not list((tmp_path / "home" / "user_models").glob("*"))  # nothing half-written
    with pytest.raises(ModelError, match=message):
        load_model(path, "cpu")


def test_class_count_must_fit_the_config(tmp_path):
    path = _save(_Good, tmp_path / "good.pth")
    two = _config(path, labels=[1, 2], thing_list=[1, 2], class_names={1: "mito", 2: "er"})
    registry = ModelRegistry(tmp_path / "home")
    with pytest.raises(ModelError, match="1 channel\\(s\\).*labels \\[1, 2\\]"):
        registry.register("two", two)
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(two))  # a sidecar config
    with pytest.raises(ModelError, match="labels \\[1, 2\\]"):
        load_model(path, "cpu")
    assert registry.register("one", _config(path)).name == "one"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"norms": {"mean": 0.5, "std": 0.0}}, "'norms.std' must be positive"),
        ({"norms": {"mean": float("nan"), "std": 0.1}}, "'norms.mean' must be a finite"),
        ({"norms": {"mean": 0.5, "std": float("inf")}}, "'norms.std' must be a finite"),
        ({"labels": [1.5]}, "'labels' must be a non-empty list of positive integers"),
        ({"labels": [True]}, "'labels'"),
        ({"labels": [1], "thing_list": [2]}, "'thing_list' \\[2\\] names labels"),
        ({"labels": [1, 2], "class_names": {1: "mito"}}, "'class_names' labels \\[1\\] differ"),
        ({"class_names": {"one": "mito"}}, "non-integer label 'one'"),
        ({"padding_factor": 18}, "'padding_factor' must be a positive multiple of 4"),
        ({"model": "http://example.org/m.pth"}, "plain http:// URL; downloads must use https"),
    ],
)
def test_config_breaches_name_the_key(tmp_path, change, message):
    path = _save(_Good, tmp_path / "good.pth")
    config = _config(path)
    config.update(change)
    with pytest.raises(ModelError, match=message):
        ModelRegistry(tmp_path / "home").register("bad", config)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "bad.yaml", "cpu")


def test_cli_model_yaml_goes_through_the_same_checks(tmp_path, capsys):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.full((64, 64), 128, np.uint8))
    bad_norms = tmp_path / "norms.yaml"
    bad_norms.write_text(yaml.safe_dump(_config(_save(_Good, tmp_path / "g.pth"), norms={})))
    missing_key = tmp_path / "keys.yaml"
    missing_key.write_text(yaml.safe_dump(_config(_save(_MissingKey, tmp_path / "k.pth"))))
    for config, message in ((bad_norms, "'norms'"), (missing_key, "lacks 'sem_logits'")):
        out = tmp_path / "out.tif"
        code = main(
            ["segment", str(image), "-o", str(out), "--model", str(config), "--no-progress"]
        )
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_probe_measures_batch_support_once(tmp_path, monkeypatch):
    from empanada_napari.core.models import loading

    path = _save(_Good, tmp_path / "good.pth")
    calls = []
    real = loading.probe_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "probe_model", counting)
    model = load_model(path, "cpu")
    assert model.supports_batch and model.supports_batch
    assert len(calls) == 1  # the contract check and the batch check are one probe
    # A model assembled by hand (as training does) is probed on first use instead.
    manual = LoadedModel.from_config("manual", model.module, model.device, path, {})
    assert manual.padding_factor == 16 and manual.thing_list == manual.labels == [1]
    assert manual.supports_batch and len(calls) == 2
