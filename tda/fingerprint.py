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
        # reshape(-1): ``view(uint8)`` refuses 0-dim tensors (BatchNorm's num_batches_tracked)
        flat = tensor.reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def model_fingerprint(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of a model's state (parameters and buffers), independent of its device."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return tensor_fingerprint(state)


def array_fingerprint(*arrays: np.ndarray | torch.Tensor) -> str:
    """SHA-256 over dtypes, shapes and bytes of arrays (e.g. a data set's inputs and targets)."""
    digest = hashlib.sha256()
    for array in arrays:
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        array = np.ascontiguousarray(array)
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """Stable hash of a JSON-serialisable configuration (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
