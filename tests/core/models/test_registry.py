"""Tests of the model registry: built-ins, user models, downloads over a local server, archives."""

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from empanada_napari.core.errors import (
    DownloadError,
    InputError,
    ModelError,
    ModelFileError,
    UnknownModelError,
)
from empanada_napari.core.models import registry as registry_module
from empanada_napari.core.models.registry import (
    HOME_ENV,
    ModelEntry,
    ModelRegistry,
    default_home,
    get_registry,
)

NORMS = {"mean": 0.57571, "std": 0.12765}

# The MitoNet models are TorchScript, which recent torch versions flag as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


class _TinyPanoptic(torch.nn.Module):
    """Smallest model following the MitoNet TorchScript contract."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(1, 4, kernel_size=1)

    def forward(
        self, x: torch.Tensor, render_steps: int = 2, interpolate_ins: bool = True
    ) -> dict[str, torch.Tensor]:
        y = self.head(x)
        return {"sem_logits": y[:, 0:1], "ctr_hmp": y[:, 1:2], "offsets": y[:, 2:4]}


def _save_tiny_model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.jit.save(torch.jit.script(_TinyPanoptic().eval()), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A valid TorchScript model file."""
    return _save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.pth", seed=0)


@pytest.fixture(scope="session")
def other_model_file(tmp_path_factory) -> Path:
    """Another valid TorchScript model with different weights (so different bytes)."""
    return _save_tiny_model(tmp_path_factory.mktemp("other") / "other.pth", seed=1)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(path))
    return path


@pytest.fixture
def registry(home) -> ModelRegistry:
    return ModelRegistry(home)


def _config(model, **extra) -> dict:
    config = {
        "class_names": {1: "mito"},
        "labels": [1],
        "thing_list": [1],
        "model": str(model),
        "padding_factor": 16,
        "norms": dict(NORMS),
        "description": "tiny test model",
    }
    config.update(extra)
    return config


def _listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (temporary files included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _run(path: Path) -> dict:
    model = torch.jit.load(str(path), map_location="cpu")
    torch.manual_seed(3)
    with torch.no_grad():
        return model(torch.rand(1, 1, 8, 8))


# --------------------------------------------------------------------------- built-ins


def test_builtins_listed_with_their_settings(registry):
    builtins = [e.name for e in registry.entries() if e.builtin]
    assert {"MitoNet_v1", "MitoNet_v1_mini", "Lucchi_Lite_v1"} <= set(builtins)
    assert registry.names()[: len(builtins)] == builtins  # built-ins listed first
    full, mini = registry.get("MitoNet_v1"), registry.get("MitoNet_v1_mini")
    assert full.builtin and mini.builtin
    assert (full.padding_factor, mini.padding_factor) == (16, 128)
    for entry in (full, mini):
        assert entry.norms == NORMS
        assert entry.model_source.startswith("https://zenodo.org/")
        assert entry.quantized_source.startswith("https://")
        assert "quantized" in entry.quantized_source
        assert entry.labels == [1] and entry.thing_list == [1]
        assert entry.class_names == {1: "mito"}
        assert entry.finetune["criterion"] == "PanopticLoss"
        assert entry.finetune["criterion_params"]["mse_weight"] == 200
        assert entry.finetune["dataset_class"] == "SingleClassInstanceDataset"
        assert entry.finetune["engine_params"]["nms_kernel"] == 7
        assert entry.finetune["engine_params"]["thing_list"] == [1]
        assert "model_sha256" not in entry.config
        assert "ResNet-50" in entry.description and "Apple silicon" in entry.description
    assert [e.name for e in registry.entries()][: len(builtins)] == builtins
    assert "MitoNet_v1" in registry and "nope" not in registry


def test_unknown_model_suggests_close_names(registry):
    with pytest.raises(UnknownModelError) as info:
        registry.get("MitoNet_v2")
    assert isinstance(info.value, KeyError)
    assert "Did you mean 'MitoNet_v1'" in str(info.value)
    assert "MitoNet_v1_mini" in str(info.value)  # the available names are listed
    with pytest.raises(UnknownModelError, match="mitonet_v1"):
        registry.get("mitonet_v1")  # exact names only, even on case-insensitive disks


def test_builtin_relative_model_path(tmp_path, tiny_model_file):
    builtin_dir = tmp_path / "configs"
    builtin_dir.mkdir()
    (builtin_dir / "bundled.pth").write_bytes(tiny_model_file.read_bytes())
    (builtin_dir / "Bundled.yaml").write_text(yaml.safe_dump(_config("bundled.pth")))
    reg = ModelRegistry(tmp_path / "home", builtin_dir=builtin_dir)
    entry = reg.get("Bundled")
    assert entry.builtin
    assert entry.model_source == str((builtin_dir / "bundled.pth").resolve())
    assert reg.fetch("Bundled") == builtin_dir / "bundled.pth"


def test_home_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "a"))
    assert default_home() == (tmp_path / "a").resolve()
    first = get_registry()
    assert first is get_registry() and first.home == (tmp_path / "a").resolve()
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "b"))
    assert get_registry().home == (tmp_path / "b").resolve()
    assert get_registry(tmp_path / "a") is first
    monkeypatch.delenv(HOME_ENV)
    assert default_home().name == "empanada-napari"


# --------------------------------------------------------------------------- registering


def test_register_original_plugin_yaml_copies_the_file(tmp_path, home, tiny_model_file):
    # Written the way the original plugin writes configs: absolute model path, int keys.
    yaml_path = tmp_path / "MyMito.yaml"
    yaml_path.write_text(
        textwrap.dedent(
            f"""\
            class_names:
              1: mito
            labels:
            - 1
            thing_list:
            - 1
            model: {tiny_model_file}
            padding_factor: 16
            norms:
              mean: 0.57571
              std: 0.12765
            description: finetuned on my data
            FINETUNE:
              criterion: PanopticLoss
              criterion_params: {{ce_weight: 1, l1_weight: 0.01, mse_weight: 200}}
              dataset_class: SingleClassInstanceDataset
              dataset_params: {{weight_gamma: 0.7}}
              engine: PanopticDeepLabEngine
              engine_params: {{confidence_thr: 0.5, label_divisor: 1000, thing_list: [1]}}
            """
        )
    )
    reg = ModelRegistry(home)
    calls = []
    reg.add_listener(lambda: calls.append("changed"))
    entry = reg.register("MyMito", yaml_path)
    assert calls == ["changed"]
    copied = home / "user_models" / "MyMito" / "MyMito.pth"
    assert copied.read_bytes() == tiny_model_file.read_bytes()
    assert tiny_model_file.exists()  # copied, not moved
    assert entry.model_source == str(copied) and not entry.builtin
    assert entry.finetune["engine_params"]["label_divisor"] == 1000
    # The YAML stays in the original format and points at the copy by a relative path.
    written = yaml.safe_load((home / "user_models" / "MyMito" / "MyMito.yaml").read_text())
    assert written["model"] == "MyMito.pth" and written["class_names"] == {1: "mito"}
    # Persisted: a fresh registry on the same home sees it.
    again = ModelRegistry(home)
    assert again.names()[-1] == "MyMito"
    assert again.fetch("MyMito") == copied
    assert entry.to_yaml_dict()["model"] == str(copied)


def test_register_relative_path_and_override(tmp_path, registry, tiny_model_file):
    folder = tmp_path / "cfg"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "w.pth").write_bytes(tiny_model_file.read_bytes())
    (folder / "m.yaml").write_text(yaml.safe_dump(_config("weights/w.pth")))
    assert registry.register("rel", folder / "m.yaml").model_source.endswith("rel.pth")
    # ``model`` overrides the YAML's path (which here does not even exist).
    (folder / "bad.yaml").write_text(yaml.safe_dump(_config("missing.pth")))
    entry = registry.register("override", folder / "bad.yaml", model=tiny_model_file)
    assert Path(entry.model_source).read_bytes() == tiny_model_file.read_bytes()


def test_register_dict_with_url_downloads_on_first_use(registry, server, tiny_model_file):
    (server.root / "m.pth").write_bytes(tiny_model_file.read_bytes())
    url = server.url("m.pth")
    entry = registry.register("remote", _config("unused.pth"), model=url)
    assert entry.model_source == url
    assert sum(server.gets.values()) == 0  # nothing fetched yet
    assert registry.fetch("remote", progress=False).read_bytes() == tiny_model_file.read_bytes()


def test_overwrite_rules(registry, tiny_model_file):
    registry.register("mine", _config(tiny_model_file))
    with pytest.raises(InputError, match="overwrite"):
        registry.register("mine", _config(tiny_model_file, padding_factor=32))
    assert registry.get("mine").padding_factor == 16
    registry.register("mine", _config(tiny_model_file, padding_factor=32), overwrite=True)
    assert registry.get("mine").padding_factor == 32
    assert _listing(registry.user_models_dir) == ["mine", "mine/mine.pth", "mine/mine.yaml"]


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden", "has space", "a" * 101, "é"])
def test_invalid_names(registry, tiny_model_file, name):
    with pytest.raises(InputError, match="invalid model name"):
        registry.register(name, _config(tiny_model_file))


def test_builtins_cannot_be_shadowed_or_removed(registry, tiny_model_file):
    with pytest.raises(InputError, match="built-in"):
        registry.register("MitoNet_v1", _config(tiny_model_file))
    with pytest.raises(InputError, match="built-in"):
        registry.remove("MitoNet_v1_mini")
    with pytest.raises(UnknownModelError):
        registry.remove("never-registered")


def test_remove_and_listeners(registry, tiny_model_file):
    calls = []

    def listener():
        calls.append(registry.names())

    registry.add_listener(listener)
    registry.register("gone", _config(tiny_model_file))
    registry.remove("gone")
    assert "gone" in calls[0] and "gone" not in calls[1]
    assert "gone" not in registry and _listing(registry.user_models_dir) == []
    registry.remove_listener(listener)
    registry.register("quiet", _config(tiny_model_file))
    assert len(calls) == 2


def test_bound_method_listeners_are_weak(registry, tiny_model_file):
    calls = []

    class Picker:
        def refresh(self) -> None:
            calls.append(self)

    picker = Picker()
    registry.add_listener(picker.refresh)
    registry.add_listener(picker.refresh)  # added once only
    registry.register("one", _config(tiny_model_file))
    assert calls == [picker]
    del picker, calls[:]  # a closed widget must not be kept alive nor called
    registry.register("two", _config(tiny_model_file))
    assert calls == []


def test_override_path_is_relative_to_cwd(tmp_path, registry, tiny_model_file, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "m.yaml").write_text(yaml.safe_dump(_config("x.pth", model_quantized="")))
    monkeypatch.chdir(tiny_model_file.parent)
    entry = registry.register("cwd", tmp_path / "cfg" / "m.yaml", model=tiny_model_file.name)
    assert Path(entry.model_source).read_bytes() == tiny_model_file.read_bytes()
    assert entry.quantized_source is None


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"model": None}, "'model'"),
        ({"norms": {"mean": 0.5}}, "'norms'"),
        ({"norms": {"mean": 0.5, "std": "x"}}, "'norms.std'"),
        ({"padding_factor": -16}, "'padding_factor'"),
        ({"padding_factor": 1.5}, "'padding_factor'"),
        ({"model_sha256": "abc"}, "'model_sha256'"),
        ({"model": "ftp://host/m.pth"}, "'model'"),
    ],
)
def test_config_validation_names_the_key(registry, tiny_model_file, change, key):
    config = _config(tiny_model_file)
    config.update(change)
    with pytest.raises(ModelError, match=key):
        registry.register("bad", config)
    assert _listing(registry.user_models_dir) == []  # no entry, no staging folder


def test_register_refuses_files_that_are_not_torchscript(tmp_path, registry):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelFileError, match="TorchScript"):
        registry.register("junk", _config(junk))
    with pytest.raises(ModelFileError, match="not found"):
        registry.register("missing", _config(tmp_path / "missing.pth"))
    assert _listing(registry.user_models_dir) == []


def test_broken_user_entry_is_skipped_but_reported(registry, tiny_model_file):
    registry.register("good", _config(tiny_model_file))
    broken = registry.user_models_dir / "broken"
    broken.mkdir()
    (broken / "broken.yaml").write_text("norms: [1, 2]\n")
    assert "broken" in registry.names()
    assert "broken" not in [e.name for e in registry.entries()]
    with pytest.raises(ModelError, match="'model'"):
        registry.get("broken")
    registry.remove("broken")  # still removable


# --------------------------------------------------------------------------- fetching


def test_fetch_caches_and_enforces_recorded_checksum(
    registry, server, tiny_model_file, other_model_file
):
    (server.root / "m.pth").write_bytes(tiny_model_file.read_bytes())
    url = server.url("m.pth")
    entry = registry.register("remote", _config(url))
    path = registry.fetch(entry, progress=False)
    assert path.parent == registry.models_dir and path.name.startswith("remote-")
    assert "?" not in path.name
    sha = hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    assert json.loads(registry.checksums_path.read_text()) == {url: sha}
    assert registry.fetch("remote", progress=False) == path
    assert server.gets["m.pth"] == 1  # the second fetch used the cache

    # The server now serves different bytes: the recorded checksum refuses them.
    path.unlink()
    (server.root / "m.pth").write_bytes(other_model_file.read_bytes())
    with pytest.raises(DownloadError, match="checksum"):
        registry.fetch("remote", progress=False)
    assert _listing(registry.models_dir) == []
    assert json.loads(registry.checksums_path.read_text()) == {url: sha}


def test_fetch_with_known_sha256(registry, server, tiny_model_file):
    (server.root / "m.pth").write_bytes(tiny_model_file.read_bytes())
    sha = hashlib.sha256(tiny_model_file.read_bytes()).hexdigest()
    registry.register("good", _config(server.url("m.pth"), model_sha256=sha.upper()))
    assert registry.fetch("good", progress=False).read_bytes() == tiny_model_file.read_bytes()
    assert not registry.checksums_path.exists()  # nothing to record: the config has it
    registry.register("bad", _config(server.url("m.pth"), model_sha256="0" * 64))
    with pytest.raises(DownloadError, match="checksum"):
        registry.fetch("bad", progress=False)
    assert [p.name for p in registry.models_dir.iterdir()] == [
        registry.fetch("good", progress=False).name
    ]


@pytest.mark.parametrize("kind", ["truncated", "html", "state_dict"])
def test_fetch_rejects_unusable_files(registry, server, tiny_model_file, kind):
    data = tiny_model_file.read_bytes()
    if kind == "truncated":
        body = data[: len(data) // 2]
    elif kind == "html":
        body = b"<!DOCTYPE html><html><body>Too many requests</body></html>"
    else:  # a zip made by torch.save, not TorchScript
        torch.save({"w": torch.zeros(2)}, server.root / "sd.pth")
        body = (server.root / "sd.pth").read_bytes()
    (server.root / "m.pth").write_bytes(body)
    registry.register("remote", _config(server.url("m.pth")))
    with pytest.raises(ModelFileError, match="not kept") as info:
        registry.fetch("remote", progress=False)
    assert server.url("m.pth") in str(info.value)
    assert _listing(registry.models_dir) == []
    assert not registry.checksums_path.exists()


def test_fetch_network_failures(registry, server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    registry.register("offline", _config(f"https://127.0.0.1:{closed_port}/m.pth"))
    registry.register("missing", _config(server.url("missing.pth")))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=f"127.0.0.1:{closed_port}"):
        registry.fetch("offline", progress=False)
    with pytest.raises(DownloadError, match="404"):
        registry.fetch("missing", progress=False)
    assert time.monotonic() - start < 10
    assert _listing(registry.models_dir) == []


def test_concurrent_fetches_download_once(registry, server, tiny_model_file):
    (server.root / "m.pth").write_bytes(tiny_model_file.read_bytes())
    registry.register("remote", _config(server.url("m.pth")))
    results, errors = [], []

    def worker():
        try:
            results.append(registry.fetch("remote", progress=False))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(set(results)) == 1
    assert server.gets["m.pth"] == 1


def test_file_url_is_used_in_place(registry, tiny_model_file):
    entry = registry.register("local-url", _config(tiny_model_file.as_uri()))
    assert entry.model_source == tiny_model_file.as_uri()
    assert registry.fetch("local-url") == tiny_model_file
    assert _listing(registry.models_dir) == []
    assert _listing(registry.user_models_dir / "local-url") == ["local-url.yaml"]


def test_missing_local_file_and_missing_quantized(registry, tmp_path, tiny_model_file):
    copy = tmp_path / "copy.pth"
    copy.write_bytes(tiny_model_file.read_bytes())
    registry.register("vanishing", _config(copy.as_uri()))
    copy.unlink()
    with pytest.raises(ModelFileError, match="not found"):
        registry.fetch("vanishing")
    with pytest.raises(ModelError, match="no quantized"):
        registry.fetch("vanishing", quantized=True)


# --------------------------------------------------------------------------- archives


def test_archive_round_trip(tmp_path, registry, server, tiny_model_file, other_model_file):
    (server.root / "q.pth").write_bytes(other_model_file.read_bytes())
    registry.register("orig", _config(tiny_model_file), quantized_model=server.url("q.pth"))
    (tmp_path / "exports").mkdir()
    archive = registry.export_archive("orig", tmp_path / "exports")  # a folder: <name>.empanada
    assert registry.export_archive("orig", tmp_path / "named").name == "named.empanada"
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["orig.pth", "orig.yaml", "orig_quantized.pth"]
        packed = yaml.safe_load(zf.read("orig.yaml"))
    assert archive.name == "orig.empanada"
    assert packed["model"] == "orig.pth" and packed["model_quantized"] == "orig_quantized.pth"
    assert packed["norms"] == NORMS

    other = ModelRegistry(tmp_path / "other-home")
    calls = []
    other.add_listener(lambda: calls.append(1))
    entry = other.import_archive(archive, name="copied")
    assert calls == [1] and entry.name == "copied"
    assert _listing(other.user_models_dir / "copied") == [
        "copied.pth",
        "copied.yaml",
        "copied_quantized.pth",
    ]
    before, after = _run(tiny_model_file), _run(other.fetch("copied"))
    for key in ("sem_logits", "ctr_hmp", "offsets"):
        assert torch.equal(before[key], after[key])
    assert other.fetch("copied", quantized=True).read_bytes() == other_model_file.read_bytes()
    # Default name: the YAML's; importing twice needs overwrite.
    assert other.import_archive(archive).name == "orig"
    with pytest.raises(InputError, match="overwrite"):
        other.import_archive(archive)
    other.import_archive(archive, overwrite=True)
    assert not [p for p in other.user_models_dir.iterdir() if p.name.startswith(".")]


def _write_zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize(
    "evil", ["../evil.yaml", "/tmp/evil.yaml", "sub/../../evil.yaml", "C:/evil.yaml", "..\\e.pth"]
)
def test_malicious_archive_members_are_refused(tmp_path, registry, tiny_model_file, evil):
    archive = _write_zip(
        tmp_path / "bad.empanada",
        {"m.pth": tiny_model_file.read_bytes(), evil: yaml.safe_dump(_config("m.pth"))},
    )
    with pytest.raises(ModelError, match="refusing"):
        registry.import_archive(archive)
    assert not (tmp_path / "evil.yaml").exists()
    assert _listing(registry.user_models_dir) == []


def test_symlink_member_is_refused(tmp_path, registry):
    archive = tmp_path / "link.empanada"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m.yaml", yaml.safe_dump(_config("m.pth")))
        info = zipfile.ZipInfo("m.pth")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ModelError, match="symbolic link"):
        registry.import_archive(archive)
    assert _listing(registry.user_models_dir) == []


def test_archive_needs_one_yaml_and_inside_files(tmp_path, registry, tiny_model_file):
    model = tiny_model_file.read_bytes()
    none = _write_zip(tmp_path / "none.empanada", {"m.pth": model})
    two = _write_zip(tmp_path / "two.empanada", {"a.yaml": "{}", "b.yaml": "{}", "m.pth": model})
    outside = _write_zip(
        tmp_path / "outside.empanada", {"m.yaml": yaml.safe_dump(_config(tiny_model_file))}
    )
    for archive, message in ((none, "found 0"), (two, "found 2"), (outside, "inside")):
        with pytest.raises(ModelError, match=message):
            registry.import_archive(archive)
    (tmp_path / "plain.empanada").write_text("not a zip")
    with pytest.raises(ModelFileError):
        registry.import_archive(tmp_path / "plain.empanada")
    assert _listing(registry.user_models_dir) == []


# --------------------------------------------------------------------------- import cost


def test_import_does_not_load_torch():
    src = Path(registry_module.__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    code = (
        "import sys, empanada_napari.core.models.registry, empanada_napari.core.models; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'pooch' not in sys.modules and 'requests' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_entry_without_config_path_resolves_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    entry = ModelEntry("x", _config("m.pth"))
    assert entry.model_source == str(tmp_path.resolve() / "m.pth")
    assert entry.quantized_source is None and entry.padding_factor == 16
