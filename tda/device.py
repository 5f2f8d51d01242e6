"""Where computation runs: ``device="auto"`` picks CUDA when present, else the CPU.

The library follows the model: data may stay in host memory, each batch is moved to the model's
device where the model meets it, and evaluated outputs come back on the data's device. Entry
points resolve one ``device`` setting and put models there with :class:`OnDevice`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else must exist here.
    Apple's ``mps`` is taken by name only (``auto`` never picks it: it has no float64).

    Raises:
        ValueError: an unknown device name, or a CUDA or MPS device asked for on a machine
            without one.
    """
    if isinstance(spec, str) and spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for, but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r} was asked for, but MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA devices")
    return device


def module_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a stateless module."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def to_device_of(model: nn.Module, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` moved to the model's device (no copy where they already are)."""
    device = module_device(model)
    return tuple(tensor.to(device) for tensor in tensors)


@dataclass(frozen=True)
class OnDevice:
    """A model factory whose models are built on the CPU (so seeded initial weights are the same
    everywhere) and then moved to ``device``."""

    factory: Callable[[], nn.Module]
    device: torch.device

    def __call__(self) -> nn.Module:
        return self.factory().to(self.device)


def on_device(factory: Callable[[], nn.Module], spec: str | torch.device = "auto") -> OnDevice:
    """``factory`` whose models land on the device ``spec`` names (see :func:`resolve_device`)."""
    return OnDevice(factory, resolve_device(spec))


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run with the global RNGs (the CPU's and every CUDA device's) seeded by ``seed``, and give
    the caller's states back afterwards: ``torch.manual_seed`` also reseeds CUDA, so forking only
    the CPU's generator would leave the caller's CUDA stream changed."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
