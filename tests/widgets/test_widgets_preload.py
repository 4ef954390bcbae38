"""Docks load their model in the background when they open (issue 19: a first click does not
wait for the model), never download one, and a Run during the load still works; every job
that runs a model, and the preloading, run in one thread (widgets/_jobs.compute_executor)."""

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


def test_model_jobs_and_preloading_share_one_thread(
    make_napari_viewer, qtbot, fresh_cache, monkeypatch
):
    import threading

    import numpy as np

    from empanada_napari.widgets import _pickers, inference_2d, inference_3d

    threads: dict[str, int] = {}

    def recorded(name, fn):
        def wrapper(*args, **kwargs):
            threads[name] = threading.get_ident()
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(_pickers, "_preload", recorded("preload", _pickers._preload))
    monkeypatch.setattr(inference_2d, "_segment", recorded("2d", inference_2d._segment))
    monkeypatch.setattr(inference_3d, "segment", recorded("3d", inference_3d.segment))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (4, 64, 64), dtype=np.uint8))
    docks = [
        viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]
        for name in ("2D Inference (Parameter Testing)", "3D Inference")
    ]
    for dock in docks:
        dock.jobs.run_button.native.click()
        qtbot.waitUntil(lambda dock=dock: not dock.jobs.busy, timeout=60_000)
    assert set(threads) == {"preload", "2d", "3d"}
    assert len(set(threads.values())) == 1
    assert threading.get_ident() not in threads.values()  # never the GUI thread


def test_a_job_waits_for_the_running_one_and_can_be_cancelled_meanwhile(qtbot):
    import threading

    from empanada_napari.widgets._jobs import JobPanel

    started, release, ran = threading.Event(), threading.Event(), []
    first, second = JobPanel("first", lambda: None), JobPanel("second", lambda: None)

    def blocking(progress, cancel):
        started.set()
        return release.wait(30)

    first.start(blocking, lambda _: "first done", compute=True)
    qtbot.waitUntil(started.is_set)
    second.start(lambda progress, cancel: ran.append(1), lambda _: "ran", compute=True)
    assert "after the running job" in second.status.value
    second.cancel()
    release.set()
    qtbot.waitUntil(lambda: not first.busy and not second.busy, timeout=30_000)
    assert first.status.value == "first done"
    assert second.status.value == "Cancelled." and ran == []
