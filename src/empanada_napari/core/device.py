"""Choosing the torch device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch


def available_devices() -> list[str]:
    """Devices usable on this machine, best first (``cuda:N``..., ``mps``, ``cpu``)."""
    import torch

    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`, checking that it exists.

    ``"auto"`` (or None) picks the first CUDA GPU, then Apple MPS, then the CPU.
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    if name == "gpu":
        name = "cuda"
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        index = 0 if dev.index is None else dev.index
        if count == 0:
            raise InputError(f"Device {device!r} asked for, but no CUDA GPU is available.")
        if index >= count:
            raise InputError(
                f"Device {device!r} asked for, but only {count} CUDA GPU(s) exist "
                f"(cuda:0..cuda:{count - 1})."
            )
        return torch.device("cuda", index)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("Device 'mps' asked for, but Apple MPS is not available here.")
        return dev
    if dev.type == "cpu":
        return dev
    raise InputError(f"Unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps.")
