"""Loading TorchScript models that follow the MitoNet contract, cached per (file, device).

A :class:`LoadedModel` bundles the scripted module with what inference needs from its
config (padding factor, norms, thing classes). Loading the same model on the same device
twice returns the cached object, so widgets and repeated CLI/API calls never reload it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import InputError, ModelError, ModelFileError
from .optimize import prepare_for_inference

if TYPE_CHECKING:
    import torch

    from .registry import ModelEntry, ModelRegistry

#: Norms of MitoNet (and of the bundled model), used when a bare .pth has no config.
MITONET_NORMS = {"mean": 0.57571, "std": 0.12765}

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
    padding_factor: int = 16
    norms: dict[str, float] = field(default_factory=lambda: dict(MITONET_NORMS))
    thing_list: list[int] = field(default_factory=lambda: [1])
    labels: list[int] = field(default_factory=lambda: [1])
    config: dict = field(default_factory=dict)
    quantized: bool = False
    _supports_batch: bool | None = field(default=None, repr=False)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

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
        not be batch-safe, so this is measured once per loaded model: two different inputs are
        run together and one at a time, and the outputs compared.
        """
        if self._supports_batch is None:
            self._supports_batch = _detect_batch_support(self)
        return self._supports_batch


def _detect_batch_support(model: LoadedModel) -> bool:
    import torch

    size = max(64, model.padding_factor)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, size, size, generator=gen).to(model.device)
    with model.lock, torch.inference_mode():
        try:
            both = model.module(x, 2, True)
            singles = [model.module(x[i : i + 1], 2, True) for i in range(2)]
        except Exception:  # noqa: BLE001 - any failure on N = 2 means "run N = 1"
            return False
        for key in ("sem_logits", "ctr_hmp", "offsets"):
            batch_out = both[key]
            if batch_out.shape[0] != 2:
                return False
            for i in range(2):
                ref = singles[i][key][0]
                tol = 1e-3 * (1.0 + float(ref.abs().max()))
                if batch_out[i].shape != ref.shape or (batch_out[i] - ref).abs().max() > tol:
                    return False
    return True


def _read_sidecar_config(path: Path) -> dict:
    """Config YAML next to a bare model file (``name.yaml`` beside ``name.pth``), if any."""
    for candidate in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if candidate.is_file():
            with open(candidate) as fh:
                return yaml.safe_load(fh) or {}
    return {}


def _jit_load(path: Path, device: torch.device):
    import torch

    if not path.is_file():
        raise ModelFileError(f"Model file {path} does not exist.")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # RuntimeError, zip errors, pickle errors...
        raise ModelFileError(
            f"Could not load {path} as a TorchScript model: the file is corrupt, truncated, "
            f"or not a TorchScript export ({type(err).__name__}: {str(err).splitlines()[0]})."
        ) from err
    module.eval()
    return module


def _resolve(model, registry: ModelRegistry | None, quantized: bool) -> tuple[str, Path, dict]:
    """Find (name, local file, config) for a registry name, entry, file path or YAML path."""
    from .registry import ModelEntry, get_registry

    if isinstance(model, ModelSpec):
        return model.name, Path(model.path), dict(model.config)
    if not isinstance(model, ModelEntry) and str(model) == "default":
        model = default_model_name(registry)
    if isinstance(model, ModelEntry):
        entry = model
        registry = registry or get_registry()
    else:
        text = str(model)
        path = Path(text).expanduser()
        if path.suffix.lower() in (".yaml", ".yml") and path.is_file():
            with open(path) as fh:
                config = yaml.safe_load(fh) or {}
            source = config.get("model_quantized" if quantized else "model")
            if not source:
                raise ModelError(f"{path} has no 'model' entry.")
            model_path = Path(source) if Path(source).is_absolute() else path.parent / source
            return path.stem, model_path, config
        if path.suffix.lower() in (".pth", ".pt", ".torchscript") or path.is_file():
            return path.stem, path, _read_sidecar_config(path)
        registry = registry or get_registry()
        entry = registry.get(text)
    file = registry.fetch(entry, quantized=quantized)
    return entry.name, Path(file), dict(entry.config)


def default_model_name(registry: ModelRegistry | None = None) -> str:
    """Name of the model used when none is chosen: the built-in marked ``default_model``.

    That is the bundled offline model once it ships; MitoNet_v1 (a download) otherwise.
    """
    from .registry import get_registry

    registry = registry or get_registry()
    for entry in registry.entries():
        if entry.builtin and entry.config.get("default_model"):
            return entry.name
    return "MitoNet_v1"


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
    config) or a model config YAML. Results are cached per (file, modification time, device).
    """
    from ..device import resolve_device

    dev = resolve_device(device)
    if isinstance(model, ModelSpec):
        quantized = model.quantized
    if quantized and dev.type != "cpu":
        raise InputError("Quantized models run on the CPU only; choose device 'cpu'.")
    name, path, config = _resolve(model, registry, quantized)
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
        module = _jit_load(path, dev)
        if not quantized:
            _channels_last(module)
            module = prepare_for_inference(module, dev)
        padding = config.get("padding_factor") or getattr(module, "padding_factor", 16)
        norms = config.get("norms") or dict(MITONET_NORMS)
        loaded = LoadedModel(
            name=name,
            module=module,
            device=dev,
            path=path,
            padding_factor=int(padding),
            norms={"mean": float(norms["mean"]), "std": float(norms["std"])},
            thing_list=[int(t) for t in config.get("thing_list", [1])],
            labels=[int(v) for v in config.get("labels", [1])],
            config=config,
            quantized=quantized,
        )
        if loaded.padding_factor <= 0 or loaded.padding_factor % 4:
            raise ModelError(
                f"Model {name} has padding_factor {loaded.padding_factor}; it must be a "
                "positive multiple of 4."
            )
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
