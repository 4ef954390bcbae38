"""One path from a model file to a loaded model, cached per (file, device).

:func:`resolve_model` turns a registry name, entry, ``.pth`` file (with its sidecar YAML) or
config YAML into (name, local file, validated config); :func:`load_model` loads that file,
checks the model contract with a probe forward (:func:`.contract.probe_model`, which also
tells whether batches are safe) and builds the :class:`LoadedModel` with
:meth:`LoadedModel.from_config`, the one place where config fallbacks live. Loading the same
model on the same device twice returns the cached object, so widgets and repeated CLI/API
calls never reload it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelFileError
from .config import (
    DEFAULT_PADDING_FACTOR,
    MITONET_NORMS,
    ModelEntry,
    check_padding_factor,
    sidecar_config,
)
from .contract import load_torchscript, probe_model
from .optimize import prepare_for_inference

if TYPE_CHECKING:
    import torch

    from .store import ModelRegistry

__all__ = [
    "MITONET_NORMS",
    "LoadedModel",
    "ModelSpec",
    "cached_models",
    "clear_model_cache",
    "default_model_name",
    "load_model",
    "load_torchscript",
    "resolve_model",
]

_CACHE: dict[tuple[str, float, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelSpec:
    """A picklable recipe for loading a model on another process or machine.

    ``load_model(spec, device)`` rebuilds the same :class:`LoadedModel` without the registry,
    which is how the chunked driver sends a model to dask workers (each loads it once).
    """

    name: str
    path: str
    config: dict
    quantized: bool = False


@dataclass(eq=False)
class LoadedModel:
    """A TorchScript model on a device, with the settings inference needs."""

    name: str
    module: Any  # torch.jit.ScriptModule
    device: torch.device
    path: Path
    padding_factor: int = DEFAULT_PADDING_FACTOR
    norms: dict[str, float] = field(default_factory=lambda: dict(MITONET_NORMS))
    thing_list: list[int] = field(default_factory=lambda: [1])
    labels: list[int] = field(default_factory=lambda: [1])
    config: dict = field(default_factory=dict)
    quantized: bool = False
    _supports_batch: bool | None = field(default=None, repr=False)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @classmethod
    def from_config(
        cls,
        name: str,
        module: Any,
        device: torch.device,
        path: Path,
        config: dict,
        *,
        quantized: bool = False,
        supports_batch: bool | None = None,
    ) -> LoadedModel:
        """Bundle ``module`` with what inference needs from its (validated) ``config``.

        Fallbacks: the padding factor comes from the config, else the module's
        ``padding_factor`` attribute, else 16; norms from the config, else MitoNet's; labels
        ``[1]``; thing classes: the labels.
        """
        padding = config.get("padding_factor") or getattr(module, "padding_factor", None)
        padding = check_padding_factor(padding or DEFAULT_PADDING_FACTOR, f"Model {name}")
        norms = config.get("norms") or MITONET_NORMS
        labels = [int(v) for v in config.get("labels") or [1]]
        return cls(
            name=name,
            module=module,
            device=device,
            path=Path(path),
            padding_factor=padding,
            norms={"mean": float(norms["mean"]), "std": float(norms["std"])},
            thing_list=[int(t) for t in config.get("thing_list") or labels],
            labels=labels,
            config=dict(config),
            quantized=quantized,
            _supports_batch=supports_batch,
        )

    @property
    def mean(self) -> float:
        return float(self.norms["mean"])

    @property
    def std(self) -> float:
        return float(self.norms["std"])

    def spec(self) -> ModelSpec:
        """A picklable description of this model (see :class:`ModelSpec`)."""
        return ModelSpec(self.name, str(self.path), dict(self.config), self.quantized)

    @property
    def supports_batch(self) -> bool:
        """Whether the model gives the same per-image outputs for a batch of N > 1.

        Published MitoNet models were only ever called with N = 1 and their PointRend step may
        not be batch-safe. :func:`load_model` measures it with the contract probe; a model
        built another way is probed on first use.
        """
        if self._supports_batch is None:
            with self.lock:
                self._supports_batch = self.probe()
        return self._supports_batch

    def probe(self) -> bool:
        """Check the model contract (ModelError names a breach); return batch support."""
        return probe_model(
            self.module, self.padding_factor, self.labels, device=self.device, name=self.name
        )


def resolve_model(
    model: str | Path | ModelEntry | ModelSpec,
    registry: ModelRegistry | None = None,
    quantized: bool = False,
) -> tuple[str, Path, dict]:
    """(name, local file, validated config) of a registry name, entry, file or YAML.

    ``"default"`` is the default model; a ``.yaml`` is read like a registry entry (so its
    ``model`` may be a relative path or an https URL, downloaded on first use); a bare model
    file takes its config from a YAML of the same name beside it, if there is one.
    """
    from .store import get_registry

    if isinstance(model, ModelSpec):
        return model.name, Path(model.path), dict(model.config)
    if not isinstance(model, ModelEntry):
        path = Path(str(model)).expanduser()
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ModelFileError(f"Model config {path} does not exist.")
            model = ModelEntry.from_file(path)
        elif suffix in (".pth", ".pt", ".torchscript") or path.is_file():
            return path.stem, path, sidecar_config(path) if path.is_file() else {}
        else:
            registry = registry or get_registry()
            model = registry.get(str(model))
    registry = registry or get_registry()
    file = registry.fetch(model, quantized=quantized)
    return model.name, Path(file), dict(model.config)


def default_model_name(registry: ModelRegistry | None = None) -> str:
    """Name of the model used when none is chosen: the built-in marked ``default_model``.

    That is the bundled offline model once it ships; MitoNet_v1 (a download) otherwise.
    """
    from .store import get_registry

    return (registry or get_registry()).default_name()


def _channels_last(module) -> None:
    """Store 4D weights channels-last, in place: convolutions run 1.1-1.6x faster on the
    CPU (measured on the bundled model, docs/benchmarks.md) and use tensor cores on CUDA.
    Outputs change by float rounding only. A module that refuses is left as it is."""
    import torch

    try:
        module.to(memory_format=torch.channels_last)
    except Exception:  # noqa: BLE001 - an optimisation only
        pass


def load_model(
    model: str | Path | ModelEntry | ModelSpec = "default",
    device: str | torch.device | None = "auto",
    *,
    registry: ModelRegistry | None = None,
    quantized: bool = False,
) -> LoadedModel:
    """Load (or reuse) a MitoNet-contract TorchScript model on ``device``.

    ``model`` is a registry name (``"default"`` is the bundled offline model), a registry
    entry, a ``.pth`` TorchScript file (a ``.yaml`` of the same name beside it supplies its
    config) or a model config YAML. The model contract is checked with a short probe
    forward; a breach raises ModelError naming it. Results are cached per (file,
    modification time, device).
    """
    from ..device import resolve_device

    dev = resolve_device(device)
    if isinstance(model, ModelSpec):
        quantized = model.quantized
    if quantized and dev.type != "cpu":
        raise InputError("Quantized models run on the CPU only; choose device 'cpu'.")
    name, path, config = resolve_model(model, registry, quantized)
    path = path.resolve()
    try:
        mtime = path.stat().st_mtime
    except OSError as err:
        raise ModelFileError(f"Model file {path} does not exist.") from err
    key = (str(path), mtime, str(dev))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        module = load_torchscript(path, dev)
        if not quantized:
            _channels_last(module)
            module = prepare_for_inference(module, dev)
        loaded = LoadedModel.from_config(name, module, dev, path, config, quantized=quantized)
        loaded.supports_batch  # noqa: B018 - the contract probe, once per load
        _CACHE[key] = loaded
        return loaded


def clear_model_cache() -> None:
    """Forget every cached model (frees their memory once no one else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def cached_models() -> list[LoadedModel]:
    """The models currently held in the cache."""
    with _CACHE_LOCK:
        return list(_CACHE.values())
