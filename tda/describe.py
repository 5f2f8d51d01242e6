"""JSON descriptions of configurations, for audit records and for what a stored model was made with.

Unlearning methods and training configurations are frozen dataclasses whose fields may hold
optimiser factories (``functools.partial``), model classes, tasks or masks. An audit record (or an
ensemble member's recipe, :mod:`tda.ensemble`) must say exactly what ran, in plain JSON that reads
the same in every process, so each value is described by what it is: dataclasses by their fields,
partials by their target and arguments, classes and functions by their qualified name, tensors by
shape, dtype and content fingerprint. Objects that hold large state (e.g. output predictors)
describe themselves with an ``audit_description()`` method.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tda.fingerprint import tensor_fingerprint


def qualified_name(target: Any) -> str:
    """``module.QualifiedName`` of a class or function."""
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def _describe_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    return {
        "tensor": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "fingerprint": tensor_fingerprint({"": tensor}),
    }


def _describe_object(value: Any) -> Any:
    if callable(getattr(value, "audit_description", None)):
        return {"type": qualified_name(type(value)), **describe(value.audit_description())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        content = {f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": qualified_name(type(value)), **content}
    if isinstance(value, functools.partial):
        return {
            "partial": qualified_name(value.func),
            "args": [describe(a) for a in value.args],
            "kwargs": {k: describe(v) for k, v in sorted(value.keywords.items())},
        }
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return qualified_name(value)
    return {"type": qualified_name(type(value)), "repr": repr(value)}


def describe(value: Any) -> Any:
    """A JSON-serialisable description of ``value`` (see the module docstring)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    if isinstance(value, torch.Tensor):
        return _describe_tensor(value)
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [describe(v) for v in items]
    return _describe_object(value)
