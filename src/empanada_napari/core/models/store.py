"""The store of models: built-in entries, user models, their files and downloads.

Layout of a registry home::

    <home>/models/                   downloaded files (model files, encoder weights)
    <home>/user_models/<name>/       <name>.yaml plus copied <name>.pth, <name>_quantized.pth
    <home>/checksums.json            sha256 of each URL, recorded on its first download

The home is ``$EMPANADA_NAPARI_HOME`` or the platform's user data folder. Configs are read
and checked by :mod:`.config`, files downloaded by :mod:`.download`, archives handled by
:mod:`.archives`; torch is only imported when a model file is checked.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import logging
import os
import shutil
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import InputError, ModelError, ModelFileError, UnknownModelError
from ._files import lock_for, new_temp_dir
from .config import (
    DEFAULT_NAME,
    MODEL_KEYS,
    NAME_RE,
    ModelEntry,
    check_name,
    dump_yaml,
    file_url_to_path,
    is_url,
    read_yaml,
    url_scheme,
    validate_config,
)
from .download import (
    DOWNLOAD_TIMEOUT,
    MAX_DOWNLOAD_BYTES,
    ChecksumStore,
    NoConnectionError,
    cache_name,
    download,
    sha256_of,
)

__all__ = ["HOME_ENV", "ModelRegistry", "builtin_config_dir", "default_home", "get_registry"]

logger = logging.getLogger(__name__)

HOME_ENV = "EMPANADA_NAPARI_HOME"
#: The built-in model used when none is chosen, unless a built-in config says
#: ``default_model: true`` (the bundled offline model does).
FALLBACK_DEFAULT = "MitoNet_v1"

_REGISTRIES: dict[str, ModelRegistry] = {}


def default_home() -> Path:
    """Return the registry home: ``$EMPANADA_NAPARI_HOME`` or the user data folder."""
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("empanada-napari", appauthor=False)).resolve()


def builtin_config_dir() -> Path:
    """Return the package folder holding the built-in model YAML configs."""
    return Path(__file__).resolve().parent / "configs"


def get_registry(home: str | Path | None = None) -> ModelRegistry:
    """Return the shared registry of ``home`` (default: :func:`default_home`, read now).

    Instances are cached per resolved home so that all widgets share one set of listeners.
    """
    resolved = Path(home).expanduser().resolve() if home is not None else default_home()
    with lock_for("<registries>"):
        registry = _REGISTRIES.get(str(resolved))
        if registry is None:
            registry = _REGISTRIES[str(resolved)] = ModelRegistry(resolved)
        return registry


def _sweep_stale(root: Path, age_s: float = 24 * 3600) -> None:
    """Delete hidden staging/trash folders that a crashed or killed process left behind."""
    now = time.time()
    for sub in root.glob(".*"):
        try:
            if sub.is_dir() and now - sub.stat().st_mtime > age_s:
                shutil.rmtree(sub, ignore_errors=True)
        except OSError:
            pass  # another process may be removing it right now


class ModelRegistry:
    """Built-in and user models of one home folder (see the module docstring for the layout)."""

    #: seconds a whole download may take (a deadline, not a per-read timeout)
    download_timeout: float = DOWNLOAD_TIMEOUT
    #: bytes a download may write at most, after decoding
    max_download_bytes: int = MAX_DOWNLOAD_BYTES

    def __init__(self, home: str | Path | None = None, *, builtin_dir: str | Path | None = None):
        self.home = Path(home).expanduser().resolve() if home is not None else default_home()
        self._builtin_dir = Path(builtin_dir).resolve() if builtin_dir is not None else None
        # Bound methods are held weakly so that a closed widget is neither kept alive nor called.
        self._listeners: list[Callable[[], Callable[[], Any] | None]] = []

    def __repr__(self) -> str:
        return f"ModelRegistry(home={str(self.home)!r})"

    # -- folders
    @property
    def models_dir(self) -> Path:
        """Cache folder of downloaded files."""
        return self.home / "models"

    @property
    def user_models_dir(self) -> Path:
        """Folder with one sub-folder per user model."""
        return self.home / "user_models"

    @property
    def checksums_path(self) -> Path:
        """JSON file mapping URL -> sha256 recorded at first download."""
        return self.home / "checksums.json"

    @property
    def checksums(self) -> ChecksumStore:
        """The store of checksums recorded at first downloads."""
        return ChecksumStore(self.checksums_path)

    @property
    def builtin_dir(self) -> Path:
        """Folder whose ``*.yaml`` files are the built-in entries."""
        return self._builtin_dir or builtin_config_dir()

    # -- listing
    def _builtin_paths(self) -> dict[str, Path]:
        folder = self.builtin_dir
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in sorted(folder.glob("*.yaml")) if NAME_RE.match(p.stem)}

    def _user_paths(self) -> dict[str, Path]:
        folder = self.user_models_dir
        if not folder.is_dir():
            return {}
        builtins = self._builtin_paths()
        found = {}
        for sub in folder.iterdir():
            # Names starting with '.' are staging folders of writes in progress.
            if NAME_RE.match(sub.name) and sub.name not in builtins:
                yaml_path = sub / f"{sub.name}.yaml"
                if yaml_path.is_file():
                    found[sub.name] = yaml_path
        return found

    def names(self) -> list[str]:
        """All registered names: built-ins first, then user models, each sorted."""
        return sorted(self._builtin_paths(), key=str.lower) + sorted(
            self._user_paths(), key=str.lower
        )

    def entries(self) -> list[ModelEntry]:
        """Entries in :meth:`names` order; user configs that fail to load are logged, skipped."""
        entries = []
        for name in self.names():
            try:
                entries.append(self.get(name))
            except ModelError as exc:
                logger.warning("skipping model %r: %s", name, exc)
        return entries

    def default_name(self) -> str:
        """Name of the model used when none is chosen (what ``"default"`` means)."""
        for name, path in self._builtin_paths().items():
            try:
                if read_yaml(path).get("default_model"):
                    return name
            except ModelError:
                continue
        return FALLBACK_DEFAULT

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name == DEFAULT_NAME or name in self._builtin_paths() or name in self._user_paths()
        )

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries())

    def get(self, name: str) -> ModelEntry:
        """Return the entry called ``name`` (``"default"``: the default model).

        UnknownModelError (with suggestions) if there is none.
        """
        if name == DEFAULT_NAME:
            name = self.default_name()
        builtins = self._builtin_paths()
        if name in builtins:
            return ModelEntry.from_file(builtins[name], builtin=True)
        users = self._user_paths()
        if name in users:
            return ModelEntry.from_file(users[name])
        available = sorted(builtins, key=str.lower) + sorted(users, key=str.lower)
        close = [n for n in available if isinstance(name, str) and n.lower() == name.lower()]
        close += difflib.get_close_matches(str(name), available, n=3, cutoff=0.6)
        hint = (
            f" Did you mean {' or '.join(repr(n) for n in dict.fromkeys(close))}?" if close else ""
        )
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Available: {', '.join(available) or 'none'} "
            f"('{DEFAULT_NAME}' means {self.default_name()})"
        )

    # -- listeners
    def add_listener(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` after every register/remove/import on this registry.

        Bound methods are referenced weakly: they stop being called once their object is gone.
        """
        if any(ref() == callback for ref in self._listeners):
            return
        if inspect.ismethod(callback):
            self._listeners.append(weakref.WeakMethod(callback))
        else:
            self._listeners.append(lambda: callback)

    def remove_listener(self, callback: Callable[[], Any]) -> None:
        """Stop calling ``callback``; unknown callbacks are ignored."""
        self._listeners = [ref for ref in self._listeners if ref() not in (None, callback)]

    def _notify(self) -> None:
        for ref in list(self._listeners):
            callback = ref()
            if callback is None:
                self._listeners = [r for r in self._listeners if r is not ref]
                continue
            try:
                callback()
            except Exception:  # a broken widget must not undo a finished registration
                logger.exception("model registry listener %r failed", callback)

    # -- registering
    def register(
        self,
        name: str,
        config: Mapping[str, Any] | str | Path,
        model: str | Path | None = None,
        *,
        quantized_model: str | Path | None = None,
        overwrite: bool = False,
        base_dir: str | Path | None = None,
    ) -> ModelEntry:
        """Add a user model from a config (YAML path or dict in the original format).

        ``model``/``quantized_model`` override the config's ``model``/``model_quantized``.
        Local files are copied into the user folder after checking the model contract (they
        load as TorchScript and pass a probe forward); a ``file://`` URL is checked the same
        way and used in place; https URLs are stored and downloaded on first :meth:`fetch`.
        Relative paths in a dict config are relative to ``base_dir`` (default: the current
        folder).
        """
        if isinstance(config, str | os.PathLike):
            config_path = Path(config).expanduser().resolve()
            if not config_path.is_file():
                raise InputError(f"model config not found: {config_path}")
            data, folder = read_yaml(config_path), config_path.parent
        elif isinstance(config, Mapping):
            data = copy.deepcopy(dict(config))
            folder = Path(base_dir) if base_dir is not None else Path.cwd()
        else:
            raise InputError(f"config must be a YAML path or a dict, not {type(config).__name__}")
        # A replaced model file makes the config's checksum meaningless.
        for override, quantized in ((model, False), (quantized_model, True)):
            key, sha_key, _ = MODEL_KEYS[quantized]
            if override is not None:
                text = os.fspath(override).strip()
                # A path given here is relative to the caller's folder, not the YAML's.
                data[key] = text if is_url(text) else str(Path(text).expanduser().resolve())
                data.pop(sha_key, None)
        entry = self._install(name, data, folder, overwrite=overwrite)
        self._notify()
        return entry

    def _install(
        self, name: str, config: dict[str, Any], base_dir: Path, *, overwrite: bool
    ) -> ModelEntry:
        """Validate, copy local model files and write the entry atomically."""
        check_name(name)
        if name in self._builtin_paths():
            raise InputError(f"{name!r} is a built-in model; choose another name")
        config = validate_config(config, f"config of {name!r}")
        root = self.user_models_dir
        root.mkdir(parents=True, exist_ok=True)
        with lock_for(root):
            _sweep_stale(root)
            final = root / name
            if final.exists() and not overwrite:
                raise InputError(f"a user model named {name!r} exists; pass overwrite=True")
            # Everything is assembled in a hidden staging folder that is renamed into place,
            # so a crash never leaves a half-written entry.
            staging = new_temp_dir(root, f".{name}.staging-")
            try:
                for quantized in (False, True):
                    self._stage_model_file(name, config, base_dir, staging, quantized)
                (staging / f"{name}.yaml").write_text(dump_yaml(config), encoding="utf-8")
                if final.exists():
                    trash = new_temp_dir(root, f".{name}.old-")
                    os.replace(final, trash / name)
                    os.replace(staging, final)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    os.replace(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return self.get(name)

    @staticmethod
    def _stage_model_file(
        name: str, config: dict, base_dir: Path, staging: Path, quantized: bool
    ) -> None:
        from .contract import check_model_file

        key, sha_key, _ = MODEL_KEYS[quantized]
        source = config.get(key)
        if not source or url_scheme(source) == "https":
            return  # downloaded on first use, and checked then
        in_place = is_url(source)  # file://: used where it is, but a model file all the same
        path = file_url_to_path(source) if in_place else Path(source).expanduser()
        path = (path if path.is_absolute() else base_dir / path).resolve()
        if not path.is_file():
            raise ModelFileError(f"model file for key '{key}' of {name!r} not found: {path}")
        target = path
        if not in_place:
            target = staging / (f"{name}_quantized.pth" if quantized else f"{name}.pth")
            shutil.copyfile(path, target)
        if config.get(sha_key) and sha256_of(target) != config[sha_key]:
            raise ModelFileError(f"{path} does not match the config's '{sha_key}' checksum")
        check_model_file(target, config, quantized=quantized, name=name)
        if not in_place:
            config[key] = target.name  # relative to the YAML, so the home folder can move

    def remove(self, name: str) -> None:
        """Delete a user model (its folder and its cached downloads); built-ins are refused."""
        if name == DEFAULT_NAME:
            name = self.default_name()
        if name in self._builtin_paths():
            raise InputError(f"{name!r} is a built-in model and cannot be removed")
        root = self.user_models_dir
        with lock_for(root):
            if name not in self._user_paths():
                self.get(name)  # raises UnknownModelError with suggestions
            cached = []
            try:
                entry = self.get(name)
                cached = [self.cache_path(entry, q) for q in (False, True)]
            except ModelError:
                pass  # a broken entry is still removable
            # Rename first so the entry disappears at once even if deleting files is slow.
            trash = new_temp_dir(root, f".{name}.old-")
            os.replace(root / name, trash / name)
            shutil.rmtree(trash, ignore_errors=True)
            for path in cached:
                if path is not None:
                    path.unlink(missing_ok=True)
        self._notify()

    # -- files and downloads
    def cache_path(self, entry: ModelEntry, quantized: bool = False) -> Path | None:
        """Where the download of an https model file goes (None for local files)."""
        source = entry.source(quantized)
        if source is None or url_scheme(source) != "https":
            return None
        stem = entry.name + ("_quantized" if quantized else "")
        return self.models_dir / cache_name(source, stem, ".pth")

    def local_file(self, name_or_entry: str | ModelEntry, quantized: bool = False) -> Path | None:
        """The model file if it is on this computer now; None if it needs a download."""
        entry = name_or_entry if isinstance(name_or_entry, ModelEntry) else self.get(name_or_entry)
        source = entry.source(quantized)
        if source is None:
            return None
        scheme = url_scheme(source)
        if scheme == "https":
            path = self.cache_path(entry, quantized)
        elif scheme == "file":
            path = file_url_to_path(source)
        elif scheme:
            return None
        else:
            path = Path(source)
        return path if path is not None and path.is_file() else None

    def file_status(self, name_or_entry: str | ModelEntry) -> str:
        """Where a model's file is, in a few words: on disk, to download (size) or missing."""
        entry = name_or_entry if isinstance(name_or_entry, ModelEntry) else self.get(name_or_entry)
        if self.local_file(entry) is not None:
            return "on disk"
        if url_scheme(entry.model_source) != "https":
            return "file missing"
        size = entry.size_mb()
        return f"download, ~{size:.0f} MB" if size else "download"

    def retrieve(
        self,
        url: str,
        *,
        stem: str | None = None,
        suffix: str = "",
        sha256: str | None = None,
        verify: Callable[[Path], None] | None = None,
        progress: Any = True,
    ) -> Path:
        """Download ``url`` into this registry's cache with its checksums, deadline and cap.

        See :func:`.download.download`; the cache file name is derived from the URL.
        """
        return download(
            url,
            self.models_dir / cache_name(url, stem, suffix),
            sha256=sha256,
            checksums=None if sha256 else self.checksums,
            verify=verify,
            progress=progress,
            timeout=self.download_timeout,
            max_bytes=self.max_download_bytes,
        )

    def fetch(
        self, name_or_entry: str | ModelEntry, *, quantized: bool = False, progress: Any = True
    ) -> Path:
        """Return the local TorchScript file of a model, downloading it if needed.

        ``progress`` is True/False for a bar on stderr, or a ``(done, total)`` callback in
        bytes (for GUI progress).
        """
        from .contract import check_torchscript

        entry = name_or_entry if isinstance(name_or_entry, ModelEntry) else self.get(name_or_entry)
        source = entry.source(quantized)
        if source is None:
            raise ModelError(f"model {entry.name!r} has no quantized version")
        scheme = url_scheme(source)
        if scheme == "https":
            try:
                return self.retrieve(
                    source,
                    stem=entry.name + ("_quantized" if quantized else ""),
                    suffix=".pth",
                    sha256=entry.config.get(MODEL_KEYS[quantized][1]),
                    verify=lambda path: check_torchscript(path, quantized=quantized),
                    progress=progress,
                )
            except NoConnectionError as exc:
                raise NoConnectionError(self.offline_message(entry, quantized), source) from exc
        if scheme == "file":
            path = file_url_to_path(source)
        elif scheme:
            raise ModelError(f"unsupported URL scheme '{scheme}' for model {entry.name!r}")
        else:
            path = Path(source)
        if not path.is_file():
            raise ModelFileError(f"model file of {entry.name!r} not found: {path}")
        return path

    def offline_message(self, entry: ModelEntry, quantized: bool = False) -> str:
        """One sentence for a download that cannot reach its server: size and what to do."""
        url = entry.source(quantized) or ""
        size = entry.size_mb(quantized)
        size_text = f"about {size:.0f} MB" if size else "size unknown"
        label = f"{entry.name} (quantized)" if quantized else entry.name
        return (
            f"Model {label} ({size_text}) cannot be downloaded: there is no connection to "
            f"{urlparse(url).hostname or url}; download {url} on a computer with internet, "
            f"then copy the file here as {self.cache_path(entry, quantized)} (the download "
            "cache) or register it with `empanada-napari models register NAME CONFIG.yaml "
            "--file FILE` (Model Manager: Register a model)."
        )

    # -- archives
    def export_archive(self, name: str, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write model ``name`` to a ``.empanada`` zip (see :func:`.archives.export_archive`)."""
        from .archives import export_archive

        return export_archive(self, name, path, overwrite=overwrite)

    def import_archive(
        self, path: str | Path, *, name: str | None = None, overwrite: bool = False
    ) -> ModelEntry:
        """Register the model in a ``.empanada`` archive, under ``name`` or its YAML's name."""
        from .archives import import_archive

        return import_archive(self, path, name=name, overwrite=overwrite)
