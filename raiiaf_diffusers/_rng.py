"""One table of the global torch RNGs per device type, used by capture and replay alike.

torch keeps one global RNG for the CPU and one per accelerator device, each with its own get/set
functions (``torch.get_rng_state``, ``torch.cuda.get_rng_state(device)``, ``torch.mps.get_rng_state()``,
``torch.xpu.get_rng_state(device)``, ...). ``DEVICE_RNG`` maps a device type to those functions, in the
spirit of diffusers' per-backend tables, so that no other module needs a chain of ``if device.type``.
A device type missing from the table has no global RNG state raiiaf can save or restore.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@dataclass(frozen=True)
class DeviceRNG:
    get: Callable[[torch.device], torch.Tensor]
    set: Callable[[torch.device, torch.Tensor], None]
    available: Callable[[torch.device], bool]


def _indexed(module_name: str) -> DeviceRNG:
    """cuda-like backends: per-device state functions taking the device, and a device count."""

    def module():
        return getattr(torch, module_name)

    def available(device: torch.device) -> bool:
        backend = getattr(torch, module_name, None)
        if backend is None or not backend.is_available():
            return False
        return device.index is None or device.index < backend.device_count()

    return DeviceRNG(
        get=lambda device: module().get_rng_state(device),
        set=lambda device, state: module().set_rng_state(state, device),
        available=available,
    )


def _mps_available(device: torch.device) -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


DEVICE_RNG: dict[str, DeviceRNG] = {
    "cpu": DeviceRNG(get=lambda device: torch.get_rng_state(),
                     set=lambda device, state: torch.set_rng_state(state),
                     available=lambda device: True),
    "cuda": _indexed("cuda"),  # ROCm builds answer to torch.cuda too
    "xpu": _indexed("xpu"),
    "mps": DeviceRNG(get=lambda device: torch.mps.get_rng_state(),
                     set=lambda device, state: torch.mps.set_rng_state(state),
                     available=_mps_available),
}

CPU = torch.device("cpu")


def device_available(device: torch.device) -> bool:
    entry = DEVICE_RNG.get(device.type)
    return entry is not None and entry.available(device)


def has_global_rng(device: torch.device) -> bool:
    return device.type in DEVICE_RNG


def get_state(device: torch.device) -> torch.Tensor:
    return DEVICE_RNG[device.type].get(device)


def set_state(device: torch.device, state: torch.Tensor) -> None:
    DEVICE_RNG[device.type].set(device, state)


def global_devices(execution_device: torch.device) -> list[torch.device]:
    """The global RNGs a call on ``execution_device`` can draw from: the CPU's, and the device's own."""
    if execution_device.type == "cpu" or not has_global_rng(execution_device):
        return [CPU]
    return [CPU, execution_device]


@functools.cache
def accelerator_present() -> bool:
    """Whether any accelerator in the table is usable here (else every execution device is the CPU)."""
    return any(name != "cpu" and entry.available(torch.device(name)) for name, entry in DEVICE_RNG.items())


@contextlib.contextmanager
def preserved(devices: list[torch.device]) -> Iterator[None]:
    """Put the global RNG states of ``devices`` back as they were, whatever happens inside the block."""
    saved = [(d, get_state(d)) for d in devices]
    try:
        yield
    finally:
        for device, state in saved:
            set_state(device, state)


__all__ = ["DEVICE_RNG", "DeviceRNG", "device_available", "get_state", "set_state", "global_devices",
           "accelerator_present", "preserved", "CPU"]
