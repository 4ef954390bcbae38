"""prepare_for_inference (issue 19): the model is frozen once at load on the CPU; labels on
real EM stay the same as with the module as loaded, attributes the code reads survive."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch

from empanada_napari.core.inference.engine import Engine2D
from empanada_napari.core.metrics import same_partition
from empanada_napari.core.models import loading
from empanada_napari.core.models.optimize import prepare_for_inference
from tests.conftest import DATA, build_toy_model


@pytest.fixture(scope="module")
def both():
    """The bundled model as load_model prepares it, and the same file as loaded before."""
    frozen = loading.load_model("default", "cpu")
    raw = loading.load_torchscript(frozen.path, frozen.device)
    loading._channels_last(raw)
    return frozen, dataclasses.replace(frozen, module=raw, _supports_batch=None)


def test_load_model_freezes_on_cpu_and_keeps_attributes(both):
    frozen, raw = both
    assert frozen.module is not raw.module
    assert not getattr(frozen.module, "training", False)
    assert frozen.module.padding_factor == raw.module.padding_factor == 32
    assert frozen.module.architecture == raw.module.architecture
    # Freezing inlines the weights: no parameters are left to look up at run time.
    assert len(list(frozen.module.parameters())) == 0 < len(list(raw.module.parameters()))


def test_real_em_labels_are_the_same(both):
    frozen, raw = both
    image = tifffile.imread(DATA / "lucchi_crop_raw.tif")[:6]
    x = torch.from_numpy(Engine2D(raw).normalize(image[:2], (0, 255)))[:, None]
    with torch.inference_mode():
        a, b = frozen.module(x, 2, False), raw.module(x, 2, False)
    for key in ("sem_logits", "ctr_hmp", "offsets"):  # float rounding only
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-3 * float(b[key].abs().max()))
    new = Engine2D(frozen, split_fragments=True).segment_slices(image)
    old = Engine2D(raw, split_fragments=True).segment_slices(image)
    assert (old > 0).sum() > 1000
    assert np.array_equal(new > 0, old > 0)
    assert same_partition(new, old)


def test_left_alone_off_cpu_in_training_or_when_not_scripted():
    module = build_toy_model()
    assert prepare_for_inference(module, torch.device("cuda")) is module
    module.train()
    assert prepare_for_inference(module, torch.device("cpu")) is module
    module.eval()
    eager = torch.nn.Conv2d(1, 1, 3)
    assert prepare_for_inference(eager.eval(), torch.device("cpu")) is eager
    frozen = prepare_for_inference(module, torch.device("cpu"))
    assert frozen is not module and frozen.padding_factor == module.padding_factor


def test_a_module_that_cannot_be_frozen_is_returned_as_it_is(monkeypatch):
    module = build_toy_model().eval()

    def refuse(*_a, **_k):
        raise RuntimeError("cannot freeze")

    monkeypatch.setattr(torch.jit, "freeze", refuse)
    assert prepare_for_inference(module, torch.device("cpu")) is module
