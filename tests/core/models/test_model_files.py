"""Untrusted model files: bounded downloads and archives, kept checksums, no code run, umask."""

from __future__ import annotations

import json
import os
import socket
import stat
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from empanada_napari.cli import main
from empanada_napari.core.errors import DownloadError, InputError, ModelError, ModelFileError
from empanada_napari.core.models import archives
from empanada_napari.core.models.download import cache_name, download
from empanada_napari.core.models.encoder_weights import CEM_URL, load_encoder_weights
from empanada_napari.core.models.registry import ModelRegistry

from ...core.models.test_registry import _config, _listing, _save_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.pth", seed=0)


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "home")


@pytest.fixture
def umask():
    """Set a umask for one test and restore the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- downloads


def test_plain_http_is_refused(tmp_path, registry, tiny):
    with pytest.raises(DownloadError, match="plain http"):
        download("http://127.0.0.1:9/m.pth", tmp_path / "m.pth")
    with pytest.raises(ModelError, match="https"):
        registry.register("insecure", _config("http://example.org/m.pth"))
    with pytest.raises(ModelError, match="https"):
        registry.register("insecure", _config(tiny), quantized_model="http://example.org/q.pth")
    assert not (tmp_path / "m.pth").exists() and "insecure" not in registry


def test_gzip_bomb_is_stopped_at_the_cap(registry, server):
    registry.register("bomb", _config(server.url("bomb")))
    registry.max_download_bytes = 1 << 20  # the bomb inflates to 64 MB
    largest = []

    def watch(done, total):
        sizes = [p.stat().st_size for p in registry.models_dir.glob("*") if p.is_file()]
        largest.append(max(sizes, default=0))

    with pytest.raises(DownloadError, match="inflates past the cap"):
        registry.fetch("bomb", progress=watch)
    assert largest and max(largest) <= registry.max_download_bytes
    assert _listing(registry.models_dir) == []


def test_download_timeout_is_a_total_deadline(registry, server):
    # 1000 bytes, one every 50 ms: no read ever waits long, but the whole takes 50 s.
    registry.register("slow", _config(server.url("drip")))
    registry.download_timeout = 1.0
    with pytest.raises(DownloadError, match="not finished within 1 s"):
        registry.fetch("slow", progress=False)
    assert _listing(registry.models_dir) == []


def test_no_connection_says_size_and_where_to_put_the_file(registry):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"https://127.0.0.1:{port}/Remote.pth?download=1"
    entry = registry.register("Remote", _config(url, model_size_mb=42))
    with pytest.raises(DownloadError) as info:
        registry.fetch("Remote", progress=False)
    message = str(info.value)
    target = registry.cache_path(entry)
    assert "no connection to 127.0.0.1" in message and "about 42 MB" in message
    assert url in message and str(target) in message and "models register" in message
    assert "\n" not in message and "Max retries" not in message and "urllib3" not in message


def test_mitonet_offline_message_names_its_size():
    registry = ModelRegistry()
    message = registry.offline_message(registry.get("MitoNet_v1"))
    assert "about 221 MB" in message and "zenodo.org" in message
    assert str(registry.models_dir) in message
    assert "size unknown" in registry.offline_message(registry.get("MitoNet_v1"), quantized=True)


def test_file_dropped_into_the_cache_is_used_and_recorded(registry, tiny):
    url = "https://127.0.0.1:9/Dropped.pth"  # never contacted
    entry = registry.register("Dropped", _config(url))
    assert registry.file_status(entry) == "download" and registry.local_file(entry) is None
    target = registry.cache_path(entry)
    target.parent.mkdir(parents=True)
    target.write_bytes(tiny.read_bytes())
    assert registry.file_status(entry) == "on disk"
    assert registry.fetch("Dropped", progress=False) == target
    assert json.loads(registry.checksums_path.read_text())[url]


def test_damaged_checksum_file_is_kept_not_rewritten(registry, server, tiny):
    (server.root / "m.pth").write_bytes(tiny.read_bytes())
    registry.register("remote", _config(server.url("m.pth")))
    registry.checksums_path.parent.mkdir(parents=True, exist_ok=True)
    damaged = b'{"https://example.org/a.pth": "ab12", oops'
    registry.checksums_path.write_bytes(damaged)
    for _ in range(2):
        with pytest.raises(DownloadError, match="damaged.*a copy is kept") as info:
            registry.fetch("remote", progress=False)
    backups = list(registry.home.glob("checksums.json.damaged-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == damaged
    assert str(backups[0]) in str(info.value)
    assert registry.checksums_path.read_bytes() == damaged  # recorded hashes not discarded
    registry.checksums_path.unlink()  # what the message tells the user to do
    assert registry.fetch("remote", progress=False).is_file()


def test_downloads_and_user_models_follow_the_umask(registry, server, tiny, umask):
    umask(0o027)
    (server.root / "m.pth").write_bytes(tiny.read_bytes())
    registry.register("remote", _config(server.url("m.pth")))
    registry.register("local", _config(tiny))
    assert _mode(registry.fetch("remote", progress=False)) == 0o640
    assert _mode(registry.user_models_dir / "local") == 0o750
    assert _mode(registry.user_models_dir / "local" / "local.pth") == 0o640


# --------------------------------------------------------------------------- encoder weights


def _checkpoint(path: Path, scale: float = 1.0) -> Path:
    from empanada_napari.core.models.architectures import build_model

    source = build_model("panoptic_lite", width=8, decoder_channels=16)
    state = {k: v * scale for k, v in source.encoder.state_dict().items()}
    torch.save({"state_dict": state, "norms": {"mean": 0.5, "std": 0.2}}, path)
    return path


class _Payload:
    """Unpickling this creates a file: the kind of code a crafted checkpoint can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_in_encoder_weights_does_not_run(tmp_path):
    from empanada_napari.core.models.architectures import build_model

    marker = tmp_path / "pwned"
    payload = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "extra": _Payload(marker)}, payload)
    with pytest.raises(ModelFileError, match="not a plain checkpoint of tensors"):
        load_encoder_weights(build_model("panoptic_lite", width=8, decoder_channels=16), payload)
    assert not marker.exists()


def test_encoder_weights_download_cached_by_url_with_recorded_checksum(registry, server, tmp_path):
    from empanada_napari.core.models.architectures import build_model

    _checkpoint(server.root / "a.pth.tar", 1.0)
    _checkpoint(server.root / "b.pth.tar", 2.0)
    url_a, url_b = server.url("a.pth.tar"), server.url("b.pth.tar")
    module = build_model("panoptic_lite", width=8, decoder_channels=16)
    assert load_encoder_weights(module, url_a, registry=registry) == {"mean": 0.5, "std": 0.2}
    load_encoder_weights(module, url_b, registry=registry)
    names = sorted(p.name for p in registry.models_dir.iterdir())
    assert names == sorted([cache_name(url_a), cache_name(url_b)])
    assert cache_name(CEM_URL) not in names  # never a fixed file name shared by URLs
    recorded = json.loads(registry.checksums_path.read_text())
    assert set(recorded) == {url_a, url_b}
    # The server now serves other bytes for A: refused, as for model files.
    (registry.models_dir / cache_name(url_a)).unlink()
    _checkpoint(server.root / "a.pth.tar", 3.0)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        load_encoder_weights(module, url_a, registry=registry)
    with pytest.raises(DownloadError, match="plain http"):
        load_encoder_weights(module, "http://127.0.0.1:9/w.pth.tar", registry=registry)


# --------------------------------------------------------------------------- archives


def test_export_refuses_an_existing_archive_and_follows_the_umask(
    tmp_path, registry, tiny, umask, capsys
):
    registry.register("mine", _config(tiny))
    dest = tmp_path / "mine.empanada"
    dest.write_bytes(b"precious")
    with pytest.raises(InputError, match="exists"):
        registry.export_archive("mine", dest)
    assert dest.read_bytes() == b"precious"
    umask(0o022)
    registry.export_archive("mine", dest, overwrite=True)
    assert zipfile.is_zipfile(dest) and _mode(dest) == 0o644
    umask(0o002)
    other = registry.export_archive("mine", tmp_path / "other")
    assert _mode(other) == 0o664


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def written(monkeypatch):
    """Bytes each archive member wrote to disk during an import (the file's size after)."""
    sizes: dict[str, int] = {}
    real = archives._copy_bounded

    def spy(src, target, limit):
        try:
            return real(src, target, limit)
        finally:
            sizes[target.name] = target.stat().st_size if target.exists() else 0

    monkeypatch.setattr(archives, "_copy_bounded", spy)
    return sizes


def test_archive_bomb_is_refused_before_writing(tmp_path, registry, written):
    config = yaml.safe_dump(_config("m.pth"))
    bomb = _zip(tmp_path / "bomb.empanada", {"m.yaml": config, "m.pth": bytes(64 << 20)})
    declared = zipfile.ZipFile(bomb).getinfo("m.pth").file_size
    with pytest.raises(ModelError, match="compression bomb"):
        registry.import_archive(bomb)
    assert sum(written.values()) < 10 * declared and written == {}
    assert _listing(registry.user_models_dir) == []


def _lie_about_size(path: Path, member: str, size: int) -> None:
    """Rewrite ``member``'s uncompressed size in its local and central headers."""
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo(member)
    data[info.header_offset + 22 : info.header_offset + 26] = size.to_bytes(4, "little")
    start = data.find(b"PK\x01\x02")
    while start >= 0:
        name_len = int.from_bytes(data[start + 28 : start + 30], "little")
        if data[start + 46 : start + 46 + name_len] == member.encode():
            data[start + 24 : start + 28] = size.to_bytes(4, "little")
        start = data.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(data))


def test_member_inflating_past_its_declared_size_is_cut_off(tmp_path, registry, written):
    config = yaml.safe_dump(_config("m.pth"))
    liar = _zip(tmp_path / "liar.empanada", {"m.yaml": config, "m.pth": bytes(64 << 20)})
    declared = 100_000
    _lie_about_size(liar, "m.pth", declared)
    with pytest.raises(ModelFileError, match="corrupt"):
        registry.import_archive(liar)
    assert "model.pth" in written and sum(written.values()) <= declared
    assert _listing(registry.user_models_dir) == []


def test_only_the_members_the_yaml_names_are_extracted(tmp_path, registry, tiny, written):
    members = {
        "m.yaml": yaml.safe_dump(_config("m.pth")),
        "m.pth": tiny.read_bytes(),
        "junk.bin": bytes(64 << 20),  # 64 MB of zeros, well compressed
    }
    archive = _zip(tmp_path / "junk.empanada", members)
    entry = registry.import_archive(archive)
    assert entry.name == "m" and written == {"model.pth": len(members["m.pth"])}
    assert _listing(registry.user_models_dir) == ["m", "m/m.pth", "m/m.yaml"]


# --------------------------------------------------------------------------- names


def test_default_is_a_name_everywhere(tmp_path, registry, tiny, capsys):
    default = registry.default_name()
    assert registry.get("default").name == default and "default" in registry
    with pytest.raises(InputError, match="reserved"):
        registry.register("default", _config(tiny))
    assert main(["models", "info", "default"]) == 0
    assert f"# {default} (built-in, the default model); file: on disk" in capsys.readouterr().out
    assert main(["models", "fetch", "default"]) == 0
    assert capsys.readouterr().out.strip().endswith(".pth")
    assert main(["models", "export", "default", str(tmp_path)]) == 0
    assert (tmp_path / f"{default}.empanada").is_file()
    assert main(["models", "remove", "default"]) == 2
    assert "built-in" in capsys.readouterr().err


def test_models_list_is_a_table_of_100_columns(capsys):
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "FILE", "DESCRIPTION"]
    assert all(len(line) <= 100 for line in lines)
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert "on disk" in rows["Lucchi_Lite_v1"] and rows["Lucchi_Lite_v1"].split()[1] == "*"
    assert "download, ~221 MB" in rows["MitoNet_v1"]
