"""Model configs: the one reader and the one validation of a model's YAML.

A model is described by a YAML config in the original empanada-napari format (``model``,
``model_quantized``, ``norms``, ``padding_factor``, ``class_names``, ``labels``,
``thing_list``, ``FINETUNE``...). Registry entries, ``--model file.yaml`` and the sidecar YAML
beside a bare ``.pth`` are all read by :func:`read_config` and checked by
:func:`validate_config`, so a config is accepted or refused the same way wherever it comes from.
Cheap to import: no torch.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml

from ..errors import InputError, ModelError
from ..settings import model_recommendations

__all__ = [
    "DEFAULT_PADDING_FACTOR",
    "MITONET_NORMS",
    "ModelEntry",
    "check_name",
    "check_padding_factor",
    "dump_yaml",
    "file_url_to_path",
    "is_url",
    "parse_yaml",
    "read_config",
    "read_yaml",
    "url_scheme",
    "validate_config",
]

DEFAULT_PADDING_FACTOR = 16
#: Bounds of a model config. A real one is a few kB with a dozen keys two levels deep; these
#: refuse a hostile one (a "billion laughs" of aliases, endless nesting) before anything walks
#: it, wherever it is read: registration, listing, loading, archives.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000  # with every alias expanded where it is used
MAX_CONFIG_DEPTH = 32
#: Bounds of its numbers (MitoNet_v1_mini pads to 128; images are scaled to [0, 1] before
#: ``norms`` apply; label ids times ``label_divisor`` must fit in uint32).
MAX_PADDING_FACTOR = 512
NORM_MEAN_LIMIT = 10.0
NORM_STD_RANGE = (1e-6, 10.0)
MAX_LABEL = 1000
MAX_SIZE_MB = 100_000
#: Norms of MitoNet (and of the bundled model), used when a bare .pth has no config.
MITONET_NORMS = {"mean": 0.57571, "std": 0.12765}
#: The name that always means "the default model"; never a registered model's own name.
DEFAULT_NAME = "default"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: (file key, checksum key, size key) of the full and the quantized model file
MODEL_KEYS = {
    False: ("model", "model_sha256", "model_size_mb"),
    True: ("model_quantized", "model_quantized_sha256", "model_quantized_size_mb"),
}


def is_url(source: str) -> bool:
    """True for ``scheme://...`` strings."""
    return bool(_URL_RE.match(source))


def url_scheme(source: str) -> str:
    """The lower-case URL scheme of ``source``, or ``""`` for a plain path."""
    return urlparse(source).scheme.lower() if is_url(source) else ""


def file_url_to_path(url: str) -> Path:
    """The local path of a ``file://`` URL (no host, or ``localhost``)."""
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ModelError(f"file URL with a host is not supported: {url}")
    return Path(url2pathname(parsed.path))


def _check_extent(root: yaml.Node, where: str) -> None:
    """Refuse a YAML document that expands to more than :data:`MAX_CONFIG_VALUES` values or
    nests deeper than :data:`MAX_CONFIG_DEPTH`, aliases counted where they are used.

    Walks the composed nodes (an alias is the same node object), each once: a billion
    laughs is measured in microseconds instead of being expanded by whoever reads it next.
    """
    seen: dict[int, tuple[int, int]] = {}  # node id -> (values, depth), aliases expanded
    path: set[int] = set()

    def walk(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in seen:
            return seen[key]
        if key in path:
            raise ModelError(f"model config {where} refers to itself (a recursive alias)")
        if len(path) >= MAX_CONFIG_DEPTH:
            raise ModelError(f"model config {where} nests deeper than {MAX_CONFIG_DEPTH} levels")
        path.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        values, depth = 1, 0
        for child in children:
            n, d = walk(child)
            values, depth = min(values + n, MAX_CONFIG_VALUES + 1), max(depth, d)
        path.discard(key)
        if values > MAX_CONFIG_VALUES or depth + 1 > MAX_CONFIG_DEPTH:
            raise ModelError(
                f"model config {where} is too large: over {MAX_CONFIG_VALUES} values or "
                f"{MAX_CONFIG_DEPTH} levels once its aliases are expanded"
            )
        seen[key] = (values, depth + 1)
        return seen[key]

    walk(root)


def _too_large(where: str | Path) -> ModelError:
    return ModelError(f"model config {where} is larger than {MAX_CONFIG_BYTES >> 10} kB")


def parse_yaml(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse a YAML mapping; bad YAML, another type or a config beyond the size bounds
    (:data:`MAX_CONFIG_BYTES`, aliases expanded) is a ModelError naming ``where``."""
    if len(text) > MAX_CONFIG_BYTES:
        raise _too_large(where)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_extent(node, where)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ModelError(f"model config {where} is not valid YAML: {exc}") from exc
    except RecursionError:  # the parser's own recursion, on nesting beyond any real config
        raise ModelError(f"model config {where} nests too deeply to be read") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ModelError(
            f"model config {where} must be a mapping of keys, not {type(data).__name__}"
        )
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """:func:`parse_yaml` of a file; an unreadable file or one that is not a regular file
    (a pipe would block) is an InputError."""
    if not Path(path).is_file():
        raise InputError(f"cannot read model config {path}: it is not a regular file")
    try:
        with open(path, "rb") as fh:  # no more than the bound: a huge file is not read whole
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read model config {path}: {exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise _too_large(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read model config {path}: {exc}") from exc
    return parse_yaml(text, str(path))


def dump_yaml(config: Mapping[str, Any]) -> str:
    """The config as YAML text, keys in their order."""
    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


def check_name(name: str) -> None:
    """Raise InputError unless ``name`` can name a registered model."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(
            f"invalid model name {name!r}: use 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    if name.lower() == DEFAULT_NAME:
        raise InputError(f"'{name}' is reserved for the default model; choose another name")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_sources(config: dict[str, Any], where: str) -> None:
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
        scheme = url_scheme(config[key])
        if scheme == "http":
            raise ModelError(
                f"{where}: key '{key}' is a plain http:// URL; downloads must use https:// "
                "(or a file:// URL or path on this computer)"
            )
        if scheme and scheme not in ("https", "file"):
            raise ModelError(f"{where}: key '{key}' uses unsupported URL scheme '{scheme}'")


def check_padding_factor(value: Any, where: str) -> int:
    """``value`` as a padding factor (a multiple of 4 up to :data:`MAX_PADDING_FACTOR`: the
    instance outputs live on a 1/4 grid), else ModelError: from a config or a module alike."""
    if not _is_int(value) or not 0 < value <= MAX_PADDING_FACTOR or value % 4:
        raise ModelError(
            f"{where}: key 'padding_factor' must be a positive multiple of 4 up to "
            f"{MAX_PADDING_FACTOR} (got {value!r})"
        )
    return int(value)


def _check_norms_and_padding(config: dict[str, Any], where: str) -> None:
    norms = config.get("norms")
    if not isinstance(norms, Mapping) or not {"mean", "std"} <= set(norms):
        raise ModelError(f"{where}: key 'norms' must be a mapping with 'mean' and 'std'")
    for key in ("mean", "std"):
        value = norms[key]
        if not _is_number(value) or not math.isfinite(value):
            raise ModelError(f"{where}: key 'norms.{key}' must be a finite number (got {value!r})")
    low, high = NORM_STD_RANGE
    if not low <= norms["std"] <= high:
        raise ModelError(
            f"{where}: key 'norms.std' must be positive, from {low:g} to {high:g} "
            f"(got {norms['std']!r})"
        )
    if abs(norms["mean"]) > NORM_MEAN_LIMIT:
        raise ModelError(
            f"{where}: key 'norms.mean' must lie between {-NORM_MEAN_LIMIT:g} and "
            f"{NORM_MEAN_LIMIT:g} (got {norms['mean']!r}); images are scaled to [0, 1] first"
        )
    check_padding_factor(config.get("padding_factor", DEFAULT_PADDING_FACTOR), where)


def _check_classes(config: dict[str, Any], where: str) -> None:
    for key in ("labels", "thing_list"):
        value = config.get(key)
        if value is not None and not (
            isinstance(value, list)
            and value
            and all(_is_int(v) and 0 < v <= MAX_LABEL for v in value)
        ):
            raise ModelError(
                f"{where}: key '{key}' must be a non-empty list of positive integers up to "
                f"{MAX_LABEL} (got {value!r})"
            )
    labels = config.get("labels") or [1]
    if len(set(labels)) != len(labels):
        raise ModelError(f"{where}: key 'labels' repeats a value ({labels!r})")
    things = config.get("thing_list")
    if things is not None and not set(things) <= set(labels):
        raise ModelError(
            f"{where}: key 'thing_list' {things!r} names labels that are not in 'labels' {labels!r}"
        )
    names = config.get("class_names")
    if names is None:
        return
    if isinstance(names, list):  # older configs: one name per label, in order
        if len(names) != len(labels):
            raise ModelError(
                f"{where}: key 'class_names' has {len(names)} names for {len(labels)} labels"
            )
        return
    if not isinstance(names, Mapping):
        raise ModelError(f"{where}: key 'class_names' must map label numbers to names")
    keys = []
    for k in names:
        try:
            keys.append(int(k))  # YAML may give int keys as strings
        except (TypeError, ValueError):
            raise ModelError(f"{where}: key 'class_names' has a non-integer label {k!r}") from None
    if sorted(keys) != sorted(labels):
        raise ModelError(
            f"{where}: key 'class_names' labels {sorted(keys)} differ from 'labels' "
            f"{sorted(labels)}"
        )


def validate_config(config: Any, where: str) -> dict[str, Any]:
    """Check a model config; return a cleaned copy. Raise ModelError naming the bad key."""
    if not isinstance(config, Mapping):
        raise ModelError(f"{where}: config must be a mapping, not {type(config).__name__}")
    config = dict(config)
    _check_sources(config, where)
    _check_norms_and_padding(config, where)
    for key in ("model_sha256", "model_quantized_sha256"):
        value = config.get(key)
        if value is None:
            continue
        digest = str(value).strip().lower().removeprefix("sha256:")
        if not _SHA256_RE.match(digest):
            raise ModelError(f"{where}: key '{key}' must be 64 hex digits (got {value!r})")
        config[key] = digest
    for key in ("model_size_mb", "model_quantized_size_mb"):
        value = config.get(key)
        if value is not None and (not _is_number(value) or not 0 < value <= MAX_SIZE_MB):
            raise ModelError(
                f"{where}: key '{key}' must be a positive number up to {MAX_SIZE_MB} "
                f"(got {value!r})"
            )
    _check_classes(config, where)
    if config.get("FINETUNE") is not None and not isinstance(config["FINETUNE"], Mapping):
        raise ModelError(f"{where}: key 'FINETUNE' must be a mapping")
    try:
        model_recommendations(config)
    except InputError as exc:
        raise ModelError(f"{where}: {exc}") from None
    return config


def read_config(path: str | Path, *, model_file: str | Path | None = None) -> dict[str, Any]:
    """Read and validate the model config YAML at ``path``.

    ``model_file`` replaces the config's ``model`` (a sidecar YAML beside a bare ``.pth``
    describes that file, whatever its ``model`` key says).
    """
    path = Path(path)
    config = read_yaml(path)
    if model_file is not None:
        config["model"] = str(model_file)
        for key in ("model_sha256", "model_quantized", "model_quantized_sha256"):
            config.pop(key, None)
    return validate_config(config, str(path))


def sidecar_config(model_file: Path) -> dict[str, Any]:
    """Config of a bare model file: the validated ``name.yaml`` beside it, or the defaults.

    Without a sidecar the model gets MitoNet's norms and one thing class; its padding factor
    then comes from the module (see :func:`.loading.load_model`).
    """
    for candidate in (model_file.with_suffix(".yaml"), model_file.with_suffix(".yml")):
        if candidate.is_file():
            return read_config(candidate, model_file=model_file)
    return {"model": str(model_file), "norms": dict(MITONET_NORMS)}


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
        return cls(name=path.stem, config=read_config(path), builtin=builtin, config_path=path)

    @property
    def description(self) -> str:
        """Human-readable description (may be empty)."""
        return " ".join(str(self.config.get("description") or "").split())

    @property
    def summary(self) -> str:
        """The first sentence of the description."""
        text = self.description
        end = text.find(". ")
        return text if end < 0 else text[: end + 1]

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

    def source(self, quantized: bool = False) -> str | None:
        """:attr:`quantized_source` or :attr:`model_source`."""
        return self.quantized_source if quantized else self.model_source

    def size_mb(self, quantized: bool = False) -> float | None:
        """Approximate download size in MB given by the config, or None if unknown."""
        value = self.config.get(MODEL_KEYS[quantized][2])
        return float(value) if value is not None else None

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
        if is_url(source):
            return source
        path = Path(source).expanduser()
        if not path.is_absolute() and self.config_path is not None:
            # Relative paths are relative to the YAML's folder, so bundled or copied files
            # keep working wherever the folder is.
            path = self.config_path.parent / path
        return str(path.resolve())
