"""Docks load their model in the background when they open (issue 19: a first click does not
wait for the model), never download one, and a Run during the load still works."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "empanada-napari"


def bundled_cached() -> bool:
    from empanada_napari.core.models.loading import cached_models

    return any(m.name == "Lucchi_Lite_v1" for m in cached_models())


@pytest.fixture
def fresh_cache(monkeypatch):
    from empanada_napari.core.models import loading

    monkeypatch.setenv("EMPANADA_NAPARI_PRELOAD", "1")
    loading.clear_model_cache()
    yield
    loading.clear_model_cache()


@pytest.mark.parametrize("name", ["2D Inference (Parameter Testing)", "3D Inference"])
def test_opening_a_dock_loads_its_model_in_the_background(
    make_napari_viewer, qtbot, fresh_cache, name
):
    viewer = make_napari_viewer()
    assert not bundled_cached()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    assert widget.model.value == "Lucchi_Lite_v1"
    qtbot.waitUntil(bundled_cached, timeout=60_000)


def test_a_model_that_needs_a_download_is_not_preloaded(
    make_napari_viewer, qtbot, fresh_cache, monkeypatch
):
    from empanada_napari.core.models.store import ModelRegistry, get_registry

    fetched: list[str] = []
    fetch = ModelRegistry.fetch

    def recording_fetch(self, entry, *args, **kwargs):
        fetched.append(getattr(entry, "name", entry))
        return fetch(self, entry, *args, **kwargs)

    monkeypatch.setattr(ModelRegistry, "fetch", recording_fetch)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "2D Inference (Parameter Testing)")
    remote = [n for n in get_registry().names() if get_registry().local_file(n) is None]
    assert remote, "MitoNet_v1 and the other published models need a download here"
    qtbot.waitUntil(bundled_cached, timeout=60_000)  # the dock's first model, local
    widget.model.value = remote[0]
    qtbot.wait(500)
    assert remote[0] not in fetched and "Lucchi_Lite_v1" in fetched


def test_run_during_the_preload_waits_for_it(make_napari_viewer, qtbot, fresh_cache):
    import numpy as np

    from empanada_napari.core.models.loading import cached_models

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "2D Inference (Parameter Testing)")
    widget.jobs.run_button.native.click()  # at once: the load is still running
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=60_000)
    assert widget.jobs.status.value.startswith("Done") or "object" in widget.jobs.status.value
    assert len(cached_models()) == 1  # loaded once, by whichever came first
