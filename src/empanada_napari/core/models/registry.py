"""Registry of segmentation models: built-in entries, user models, downloads and archives.

A model is described by a YAML config in the original empanada-napari format (``model``,
``model_quantized``, ``norms``, ``padding_factor``, ``FINETUNE``...). Built-in configs ship in
the ``configs`` folder next to this file; user models live under the registry home::

    <home>/models/                   downloaded model files (pooch cache)
    <home>/user_models/<name>/       <name>.yaml plus copied <name>.pth, <name>_quantized.pth
    <home>/checksums.json            sha256 of each URL, recorded on its first download

The home is ``$EMPANADA_NAPARI_HOME`` or the platform's user data folder. torch, pooch and
requests are imported inside the functions that need them so that importing this module (and
so starting the napari plugin) stays cheap.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml

from ..errors import (
    DownloadError,
    InputError,
    ModelError,
    ModelFileError,
    UnknownModelError,
)

__all__ = [
    "ARCHIVE_SUFFIX",
    "HOME_ENV",
    "ModelEntry",
    "ModelRegistry",
    "builtin_config_dir",
    "check_torchscript",
    "default_home",
    "get_registry",
]

logger = logging.getLogger(__name__)

HOME_ENV = "EMPANADA_NAPARI_HOME"
ARCHIVE_SUFFIX = ".empanada"
DEFAULT_PADDING_FACTOR = 16
# Seconds without data before a download gives up; generous because Zenodo can be slow to start.
DOWNLOAD_TIMEOUT = 60.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MODEL_KEYS = {
    False: ("model", "model_sha256"),
    True: ("model_quantized", "model_quantized_sha256"),
}

# Locks shared by every registry in the process, keyed by an absolute path, so that two
# widgets fetching the same file (or registering in the same home) wait for each other.
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_REGISTRIES: dict[str, ModelRegistry] = {}
_REGISTRIES_GUARD = threading.Lock()


def _lock_for(key: Path | str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(key), threading.RLock())


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
    with _REGISTRIES_GUARD:
        registry = _REGISTRIES.get(str(resolved))
        if registry is None:
            registry = _REGISTRIES[str(resolved)] = ModelRegistry(resolved)
        return registry


# --------------------------------------------------------------------------- helpers


def _is_url(source: str) -> bool:
    return bool(_URL_RE.match(source))


def _scheme(source: str) -> str:
    return urlparse(source).scheme.lower() if _is_url(source) else ""


def _file_url_to_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ModelError(f"file URL with a host is not supported: {url}")
    return Path(url2pathname(parsed.path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ModelError(f"model config {path} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise InputError(f"cannot read model config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(
            f"model config {path} must be a mapping of keys, not {type(data).__name__}"
        )
    return data


def _dump_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


def _short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(
            f"invalid model name {name!r}: use 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )


def _validate_config(config: Any, where: str) -> dict[str, Any]:
    """Check the keys the registry relies on; raise ModelError naming the bad key."""
    if not isinstance(config, Mapping):
        raise ModelError(f"{where}: config must be a mapping, not {type(config).__name__}")
    config = dict(config)
    for key, required in (("model", True), ("model_quantized", False)):
        value = config.get(key)
        if value in (None, "") and not required:
            config.pop(key, None)  # the original format allows an empty 'model_quantized:'
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise ModelError(
                f"{where}: key '{key}' must be a model file path or URL (got {value!r})"
            )
        config[key] = value.strip()  # the original configs have stray trailing spaces
        scheme = _scheme(config[key])
        if scheme and scheme not in ("http", "https", "file"):
            raise ModelError(f"{where}: key '{key}' uses unsupported URL scheme '{scheme}'")
    norms = config.get("norms")
    if not isinstance(norms, Mapping) or not {"mean", "std"} <= set(norms):
        raise ModelError(f"{where}: key 'norms' must be a mapping with 'mean' and 'std'")
    for key in ("mean", "std"):
        value = norms[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelError(f"{where}: key 'norms.{key}' must be a number (got {value!r})")
    if norms["std"] <= 0:
        raise ModelError(f"{where}: key 'norms.std' must be positive (got {norms['std']!r})")
    padding = config.get("padding_factor", DEFAULT_PADDING_FACTOR)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding <= 0:
        raise ModelError(f"{where}: key 'padding_factor' must be a positive integer ({padding!r})")
    for key in ("model_sha256", "model_quantized_sha256"):
        value = config.get(key)
        if value is None:
            continue
        digest = str(value).strip().lower().removeprefix("sha256:")
        if not _SHA256_RE.match(digest):
            raise ModelError(f"{where}: key '{key}' must be 64 hex digits (got {value!r})")
        config[key] = digest
    for key in ("labels", "thing_list"):
        value = config.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, int) for v in value)
        ):
            raise ModelError(f"{where}: key '{key}' must be a list of integers (got {value!r})")
    if config.get("FINETUNE") is not None and not isinstance(config["FINETUNE"], Mapping):
        raise ModelError(f"{where}: key 'FINETUNE' must be a mapping")
    return config


def check_torchscript(path: str | Path, *, quantized: bool = False) -> None:
    """Raise ModelFileError unless ``path`` is a TorchScript file that torch can load on CPU.

    Quantized (fbgemm) models are only checked structurally where torch has no fbgemm/x86
    engine (e.g. Apple silicon), since loading them there can fail for a sound file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    # A truncated download or an HTML error page is not a zip at all: say so plainly
    # instead of passing on torch's long C++ message.
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path.name} is not a TorchScript archive (truncated download, HTML page or "
            "another kind of file)"
        )
    import torch

    engines = set(torch.backends.quantized.supported_engines)
    if quantized and not engines & {"fbgemm", "x86"}:
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
                has_code = any(n.endswith("constants.pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"{path.name} is a corrupt archive: {exc}") from exc
        if bad is not None or not has_code:
            raise ModelFileError(f"{path.name} is a corrupt or non-TorchScript archive")
        return
    try:
        with warnings.catch_warnings():
            # Recent torch deprecates TorchScript loudly; this check is not the place to say so.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError, ValueError, zip errors...
        raise ModelFileError(
            f"{path.name} cannot be loaded as TorchScript: {_short_reason(exc)}"
        ) from exc


def _check_member(member: zipfile.ZipInfo, archive: Path) -> None:
    """Refuse archive members that could write outside the extraction folder."""
    name = member.filename
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    mode = member.external_attr >> 16
    problem = None
    if posix.is_absolute() or windows.is_absolute() or windows.drive or name.startswith("\\"):
        problem = "an absolute path"
    elif ".." in posix.parts or ".." in windows.parts:
        problem = "a '..' component"
    elif (mode & 0o170000) == 0o120000:
        problem = "a symbolic link"
    elif "\x00" in name:
        problem = "a NUL character"
    if problem:
        raise ModelError(f"refusing archive {archive}: member {name!r} has {problem}")


class _QuietPooch(logging.Filter):
    """Drop pooch's INFO records in threads downloading for the registry.

    pooch tells users to pass a 'known_hash' to 'pooch.retrieve', which is noise for napari
    users; the registry logs its own messages instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or threading.get_ident() not in self.threads


_QUIET_POOCH = _QuietPooch()


@contextmanager
def _quiet_pooch(pooch_logger: logging.Logger) -> Iterator[None]:
    if _QUIET_POOCH not in pooch_logger.filters:
        pooch_logger.addFilter(_QUIET_POOCH)
    ident = threading.get_ident()
    _QUIET_POOCH.threads.add(ident)
    try:
        yield
    finally:
        _QUIET_POOCH.threads.discard(ident)


def _sweep_stale(root: Path, age_s: float = 24 * 3600) -> None:
    """Delete hidden staging/trash folders that a crashed or killed process left behind."""
    now = time.time()
    for sub in root.glob(".*"):
        try:
            if sub.is_dir() and now - sub.stat().st_mtime > age_s:
                shutil.rmtree(sub, ignore_errors=True)
        except OSError:
            pass  # another process may be removing it right now


def _stat_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- entries


@dataclass
class ModelEntry:
    """One registered model: its config (as read from YAML) and where it came from."""

    name: str
    config: dict[str, Any]
    builtin: bool = False
    config_path: Path | None = None

    @classmethod
    def from_file(cls, path: str | Path, *, builtin: bool = False) -> ModelEntry:
        """Read and validate the YAML config at ``path``; the file stem is the name."""
        path = Path(path).resolve()
        config = _validate_config(_read_yaml(path), str(path))
        return cls(name=path.stem, config=config, builtin=builtin, config_path=path)

    @property
    def description(self) -> str:
        """Human-readable description (may be empty)."""
        return " ".join(str(self.config.get("description") or "").split())

    @property
    def padding_factor(self) -> int:
        """Images are padded to a multiple of this many pixels before inference."""
        return int(self.config.get("padding_factor", DEFAULT_PADDING_FACTOR))

    @property
    def norms(self) -> dict[str, float]:
        """Intensity normalization applied to images scaled to [0, 1]."""
        norms = self.config.get("norms") or {}
        return {"mean": float(norms.get("mean", 0.0)), "std": float(norms.get("std", 1.0))}

    @property
    def model_source(self) -> str:
        """URL or absolute path of the model file."""
        return self._resolve(self.config["model"])

    @property
    def quantized_source(self) -> str | None:
        """URL or absolute path of the quantized CPU model, or None."""
        source = self.config.get("model_quantized")
        return self._resolve(source) if source else None

    @property
    def labels(self) -> list[int]:
        """Label values the model predicts."""
        return [int(v) for v in self.config.get("labels") or [1]]

    @property
    def thing_list(self) -> list[int]:
        """Labels that are countable instances ("things")."""
        return [int(v) for v in self.config.get("thing_list") or self.labels]

    @property
    def class_names(self) -> dict[int, str]:
        """Map label value -> class name (older configs give a plain list)."""
        names = self.config.get("class_names") or {}
        if isinstance(names, list):
            return {label: str(n) for label, n in zip(self.labels, names, strict=False)}
        return {int(k): str(v) for k, v in names.items()}

    @property
    def finetune(self) -> dict[str, Any]:
        """The FINETUNE block (training settings), empty if absent."""
        return copy.deepcopy(dict(self.config.get("FINETUNE") or {}))

    @property
    def architecture(self) -> str | None:
        """Optional architecture name (an extension key; absent in original configs)."""
        arch = self.config.get("architecture")
        return str(arch) if arch else None

    def to_yaml_dict(self, *, resolve_paths: bool = True) -> dict[str, Any]:
        """Return the config in the original format, with model paths made absolute."""
        config = copy.deepcopy(self.config)
        if resolve_paths:
            config["model"] = self.model_source
            if self.quantized_source:
                config["model_quantized"] = self.quantized_source
        return config

    def _resolve(self, source: str) -> str:
        source = str(source).strip()
        if _is_url(source):
            return source
        path = Path(source).expanduser()
        if not path.is_absolute() and self.config_path is not None:
            # Relative paths are relative to the YAML's folder, so bundled or copied files
            # keep working wherever the folder is.
            path = self.config_path.parent / path
        return str(path.resolve())


# --------------------------------------------------------------------------- registry


class ModelRegistry:
    """Built-in and user models of one home folder (see the module docstring for the layout)."""

    #: seconds without data before a download is abandoned
    download_timeout: float = DOWNLOAD_TIMEOUT

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
        """Cache folder of downloaded model files."""
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
    def builtin_dir(self) -> Path:
        """Folder whose ``*.yaml`` files are the built-in entries."""
        return self._builtin_dir or builtin_config_dir()

    # -- listing
    def _builtin_paths(self) -> dict[str, Path]:
        folder = self.builtin_dir
        if not folder.is_dir():
            return {}
        return {p.stem: p for p in sorted(folder.glob("*.yaml")) if _NAME_RE.match(p.stem)}

    def _user_paths(self) -> dict[str, Path]:
        folder = self.user_models_dir
        if not folder.is_dir():
            return {}
        builtins = self._builtin_paths()
        found = {}
        for sub in folder.iterdir():
            # Names starting with '.' are staging folders of writes in progress.
            if _NAME_RE.match(sub.name) and sub.name not in builtins:
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

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (
            name in self._builtin_paths() or name in self._user_paths()
        )

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries())

    def get(self, name: str) -> ModelEntry:
        """Return the entry called ``name``; UnknownModelError (with suggestions) if none."""
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
            f"unknown model {name!r}.{hint} Available: {', '.join(available) or 'none'}"
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
    ) -> ModelEntry:
        """Add a user model from a config (YAML path or dict in the original format).

        ``model``/``quantized_model`` override the config's ``model``/``model_quantized``.
        Local files are copied into the user folder after checking they load as
        TorchScript; URLs are stored and downloaded on first :meth:`fetch`.
        """
        if isinstance(config, str | os.PathLike):
            config_path = Path(config).expanduser().resolve()
            if not config_path.is_file():
                raise InputError(f"model config not found: {config_path}")
            data, base_dir = _read_yaml(config_path), config_path.parent
        elif isinstance(config, Mapping):
            data, base_dir = copy.deepcopy(dict(config)), Path.cwd()
        else:
            raise InputError(f"config must be a YAML path or a dict, not {type(config).__name__}")
        # A replaced model file makes the config's checksum meaningless.
        for override, (key, sha_key) in (
            (model, _MODEL_KEYS[False]),
            (quantized_model, _MODEL_KEYS[True]),
        ):
            if override is not None:
                text = os.fspath(override).strip()
                # A path given here is relative to the caller's folder, not the YAML's.
                data[key] = text if _is_url(text) else str(Path(text).expanduser().resolve())
                data.pop(sha_key, None)
        entry = self._install(name, data, base_dir, overwrite=overwrite)
        self._notify()
        return entry

    def _install(
        self, name: str, config: dict[str, Any], base_dir: Path, *, overwrite: bool
    ) -> ModelEntry:
        """Validate, copy local model files and write the entry atomically."""
        _check_name(name)
        if name in self._builtin_paths():
            raise InputError(f"{name!r} is a built-in model; choose another name")
        config = _validate_config(config, f"config of {name!r}")
        root = self.user_models_dir
        root.mkdir(parents=True, exist_ok=True)
        with _lock_for(root):
            _sweep_stale(root)
            final = root / name
            if final.exists() and not overwrite:
                raise InputError(f"a user model named {name!r} exists; pass overwrite=True")
            # Everything is assembled in a hidden staging folder that is renamed into place,
            # so a crash never leaves a half-written entry.
            staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.staging-"))
            try:
                for quantized in (False, True):
                    self._stage_model_file(name, config, base_dir, staging, quantized)
                (staging / f"{name}.yaml").write_text(_dump_yaml(config), encoding="utf-8")
                if final.exists():
                    trash = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.old-"))
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
        key, sha_key = _MODEL_KEYS[quantized]
        source = config.get(key)
        if not source or _is_url(source):
            return  # URLs (file:// included) are kept as they are and fetched on use
        path = Path(source).expanduser()
        path = (path if path.is_absolute() else base_dir / path).resolve()
        if not path.is_file():
            raise ModelFileError(f"model file for key '{key}' of {name!r} not found: {path}")
        target = staging / (f"{name}_quantized.pth" if quantized else f"{name}.pth")
        shutil.copyfile(path, target)
        if config.get(sha_key) and _sha256(target) != config[sha_key]:
            raise ModelFileError(f"{path} does not match the config's '{sha_key}' checksum")
        check_torchscript(target, quantized=quantized)
        config[key] = target.name  # relative to the YAML, so the home folder can move

    def remove(self, name: str) -> None:
        """Delete a user model (its folder and its cached downloads); built-ins are refused."""
        if name in self._builtin_paths():
            raise InputError(f"{name!r} is a built-in model and cannot be removed")
        root = self.user_models_dir
        with _lock_for(root):
            if name not in self._user_paths():
                self.get(name)  # raises UnknownModelError with suggestions
            cached = []
            try:
                entry = self.get(name)
                cached = [
                    self._cache_path(entry.name, src, q)
                    for q, src in ((False, entry.model_source), (True, entry.quantized_source))
                    if src and _scheme(src) in ("http", "https")
                ]
            except ModelError:
                pass  # a broken entry is still removable
            # Rename first so the entry disappears at once even if deleting files is slow.
            trash = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.old-"))
            os.replace(root / name, trash / name)
            shutil.rmtree(trash, ignore_errors=True)
            for path in cached:
                path.unlink(missing_ok=True)
        self._notify()

    # -- fetching
    def _cache_path(self, name: str, url: str, quantized: bool) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ("_quantized" if quantized else "")
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
        return self.models_dir / f"{safe}-{digest}.pth"

    def _read_checksums(self) -> dict[str, str]:
        try:
            data = json.loads(self.checksums_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable %s: %s", self.checksums_path, exc)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _record_checksum(self, url: str, digest: str) -> None:
        with _lock_for(self.checksums_path):
            data = self._read_checksums()
            data[url] = digest
            _atomic_write_text(self.checksums_path, json.dumps(data, indent=2, sort_keys=True))

    def fetch(
        self, name_or_entry: str | ModelEntry, *, quantized: bool = False, progress: Any = True
    ) -> Path:
        """Return the local TorchScript file of a model, downloading it if needed.

        ``progress`` is True/False for a tqdm bar on stderr, or a tqdm-like object
        (``total``, ``update``, ``reset``, ``close``) for GUI progress.
        """
        entry = name_or_entry if isinstance(name_or_entry, ModelEntry) else self.get(name_or_entry)
        source = entry.quantized_source if quantized else entry.model_source
        if source is None:
            raise ModelError(f"model {entry.name!r} has no quantized version")
        scheme = _scheme(source)
        if scheme in ("http", "https"):
            sha = entry.config.get(_MODEL_KEYS[quantized][1])
            return self._download(entry.name, source, sha, quantized, progress)
        if scheme == "file":
            path = _file_url_to_path(source)
        elif scheme:
            raise ModelError(f"unsupported URL scheme '{scheme}' for model {entry.name!r}")
        else:
            path = Path(source)
        if not path.is_file():
            raise ModelFileError(f"model file of {entry.name!r} not found: {path}")
        return path

    def _download(
        self, name: str, url: str, sha: str | None, quantized: bool, progress: Any
    ) -> Path:
        import pooch
        import requests

        target = self._cache_path(name, url, quantized)
        with _lock_for(target):
            known = sha or self._read_checksums().get(url)
            before = _stat_signature(target)
            downloader = pooch.HTTPDownloader(
                progressbar=progress, chunk_size=1 << 20, timeout=self.download_timeout
            )
            if before is None:
                logger.info("downloading model %r from %s to %s", name, url, target)
            try:
                # pooch streams into a temporary file next to the target and only moves it
                # into place once complete and matching known_hash; it deletes it otherwise.
                with _quiet_pooch(pooch.get_logger()):
                    path = pooch.retrieve(
                        url,
                        known_hash=f"sha256:{known}" if known else None,
                        fname=target.name,
                        path=self.models_dir,
                        progressbar=progress,
                        downloader=downloader,
                    )
                path = Path(path)
            except ValueError as exc:
                if "hash" not in str(exc).lower():
                    raise DownloadError(f"could not download {url}: {exc}") from exc
                # A stale cached copy that fails the check must not be used later either.
                target.unlink(missing_ok=True)
                origin = (
                    "the config's model_sha256"
                    if sha
                    else f"the one recorded in {self.checksums_path}"
                )
                raise DownloadError(
                    f"checksum mismatch for {url}: the file differs from {origin}; it was not kept"
                ) from exc
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else "?"
                reason = exc.response.reason if exc.response is not None else exc
                raise DownloadError(f"could not download {url}: HTTP {status} {reason}") from exc
            except requests.Timeout as exc:
                raise DownloadError(
                    f"could not download {url}: no answer within {self.download_timeout:g} s"
                ) from exc
            except requests.ConnectionError as exc:
                raise DownloadError(
                    f"could not download {url}: connection failed ({_short_reason(exc)})"
                ) from exc
            except (requests.RequestException, OSError) as exc:
                raise DownloadError(f"could not download {url}: {_short_reason(exc)}") from exc
            # Check new files, and files never verified (left by an interrupted session).
            if known is None or _stat_signature(path) != before:
                try:
                    check_torchscript(path, quantized=quantized)
                except ModelFileError as exc:
                    path.unlink(missing_ok=True)
                    raise ModelFileError(
                        f"the file downloaded from {url} is not a usable model ({exc}); "
                        "it was not kept"
                    ) from exc
            if known is None:
                # Trust on first use: later downloads of this URL must give the same bytes.
                self._record_checksum(url, _sha256(path))
            return path

    # -- archives
    def export_archive(self, name: str, path: str | Path) -> Path:
        """Write model ``name`` (config + model files) to a ``.empanada`` zip; return its path.

        URL models are downloaded first. A folder ``path`` gets ``<name>.empanada`` inside it.
        """
        entry = self.get(name)
        dest = Path(path).expanduser()
        if dest.is_dir():
            dest = dest / f"{entry.name}{ARCHIVE_SUFFIX}"
        elif dest.suffix.lower() != ARCHIVE_SUFFIX:
            dest = dest.with_name(dest.name + ARCHIVE_SUFFIX)
        files = {False: self.fetch(entry, progress=False)}
        if entry.quantized_source:
            files[True] = self.fetch(entry, quantized=True, progress=False)
        config = copy.deepcopy(entry.config)
        members = {}
        for quantized, file in files.items():
            key, sha_key = _MODEL_KEYS[quantized]
            member = f"{entry.name}_quantized.pth" if quantized else f"{entry.name}.pth"
            config[key] = member
            # Carry a checksum so that the import can tell a damaged archive.
            config[sha_key] = _sha256(file)
            members[member] = file
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w") as zf:
                zf.writestr(f"{entry.name}.yaml", _dump_yaml(config), zipfile.ZIP_DEFLATED)
                for member, file in members.items():
                    # TorchScript files are zips already: storing them is much faster.
                    zf.write(file, member, zipfile.ZIP_STORED)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest.resolve()

    def import_archive(
        self, path: str | Path, *, name: str | None = None, overwrite: bool = False
    ) -> ModelEntry:
        """Register the model in a ``.empanada`` archive, under ``name`` or its YAML's name."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ModelFileError(f"model archive not found: {path}")
        if not zipfile.is_zipfile(path):
            raise ModelFileError(f"{path} is not a model archive (not a zip file)")
        self.user_models_dir.mkdir(parents=True, exist_ok=True)
        try:
            zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelFileError(f"{path} is not a readable model archive: {exc}") from exc
        with zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            for member in zf.infolist():
                _check_member(member, path)
            yamls = [m for m in members if m.filename.lower().endswith((".yaml", ".yml"))]
            if len(yamls) != 1:
                raise ModelError(
                    f"{path} must contain exactly one .yaml config, found {len(yamls)}"
                )
            staging = Path(tempfile.mkdtemp(dir=self.user_models_dir, prefix=".import-"))
            try:
                try:
                    for member in members:
                        target = staging.joinpath(*PurePosixPath(member.filename).parts)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                    raise ModelFileError(f"{path} is a corrupt archive: {exc}") from exc
                yaml_path = staging.joinpath(*PurePosixPath(yamls[0].filename).parts)
                config = _read_yaml(yaml_path)
                for key, _ in _MODEL_KEYS.values():
                    source = config.get(key)
                    # Only files inside the archive or URLs: an archive must not pull in
                    # arbitrary files from this computer.
                    if not isinstance(source, str) or not source.strip():
                        continue  # a missing or odd value is reported by the validation
                    if _is_url(source.strip()):
                        if _scheme(source.strip()) not in ("http", "https"):
                            raise ModelError(f"{path}: key '{key}' may not be a local file URL")
                        continue
                    inside = (yaml_path.parent / source.strip()).resolve()
                    if not inside.is_relative_to(staging.resolve()) or not inside.is_file():
                        raise ModelError(
                            f"{path}: key '{key}' must name a file inside the archive "
                            f"(got {source!r})"
                        )
                entry = self._install(
                    name or yaml_path.stem, config, yaml_path.parent, overwrite=overwrite
                )
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self._notify()
        return entry
