"""Content fingerprints that tie stored artefacts (features, scores, requests) to models, data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of tensors, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of a contiguous CPU tensor of any dtype, bfloat16 included."""
    # reshape(-1): ``view(uint8)`` refuses 0-dim tensors (BatchNorm's num_batches_tracked)
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def model_fingerprint(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of a model's state (parameters and buffers), independent of its device."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return tensor_fingerprint(state)


def array_fingerprint(*arrays: np.ndarray | torch.Tensor) -> str:
    """SHA-256 over dtypes, shapes and bytes of arrays (e.g. a data set's inputs and targets).

    A tensor is hashed as the numpy array it converts to; one of a dtype numpy lacks
    (``torch.bfloat16``, the float8 types) by its torch dtype name, shape and raw bytes. So a
    float32 tensor and its numpy array share a fingerprint, and the fingerprints of numpy dtypes
    are the same as before bfloat16 was supported.
    """
    digest = hashlib.sha256()
    for array in arrays:
        dtype, shape, data = _array_parts(array)
        digest.update(dtype.encode())
        digest.update(str(shape).encode())
        digest.update(data)
    return digest.hexdigest()


def _array_parts(array: np.ndarray | torch.Tensor) -> tuple[str, tuple[int, ...], bytes]:
    """The dtype name, shape and bytes that :func:`array_fingerprint` hashes."""
    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        try:
            array = tensor.numpy()
        except TypeError:  # "unsupported ScalarType": numpy has no such dtype
            return str(tensor.dtype), tuple(tensor.shape), _raw_bytes(tensor.contiguous())
    array = np.ascontiguousarray(array)
    return str(array.dtype), array.shape, array.tobytes()


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """Stable hash of a JSON-serialisable configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
