"""JSON descriptions of configurations, for audit records and for what a stored model was made with.

Unlearning methods and training configurations are frozen dataclasses whose fields may hold
optimiser factories (``functools.partial``), model classes, tasks or masks. An audit record (or an
ensemble member's recipe, :mod:`tda.ensemble`) must say exactly what ran, in plain JSON that reads
the same in every process, so each value is described by what it is: dataclasses by their fields,
partials by their target and arguments, classes and functions by their qualified name, tensors
and numpy arrays by shape, dtype and content fingerprint. A lambda or local function, whose name
does not tell two apart, is also described by a digest of its code and by its defaults and closure
values; an object with the default ``repr`` (a memory address) by its type and attributes. Objects
that hold large state (e.g. output predictors) describe themselves with an
``audit_description()`` method.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch

from tda.fingerprint import array_fingerprint, tensor_fingerprint

# ids of the objects being described, outermost first: a value met again inside itself (a local
# function calling itself through its closure) is named rather than described without end
_DESCRIBING: ContextVar[frozenset[int]] = ContextVar("_DESCRIBING", default=frozenset())


def qualified_name(target: Any) -> str:
    """``module.QualifiedName`` of a class or function."""
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def _describe_tensor(tensor: torch.Tensor) -> dict[str, Any]:
    return {
        "tensor": list(tensor.shape),
        "dtype": str(tensor.dtype),
        "fingerprint": tensor_fingerprint({"": tensor}),
    }


def _describe_array(array: np.ndarray) -> Any:
    if array.dtype == object:  # its bytes are pointers
        return describe(array.tolist())
    return {
        "array": list(array.shape),
        "dtype": str(array.dtype),
        "fingerprint": array_fingerprint(array),
    }


def _is_local_function(value: Any) -> bool:
    """A lambda or a function defined inside another: its qualified name does not identify it."""
    name = getattr(value, "__qualname__", "")
    return isinstance(value, types.FunctionType) and ("<lambda>" in name or "<locals>" in name)


def _code_parts(code: types.CodeType) -> list[Any]:
    """What a code object's behaviour is made of, as JSON that reads the same in every process:
    its bytecode, constants (nested functions' code in turn) and the global names it uses."""
    return [code.co_code.hex(), [_constant(c) for c in code.co_consts], list(code.co_names)]


def _constant(value: Any) -> Any:
    if isinstance(value, types.CodeType):
        return _code_parts(value)
    if isinstance(value, tuple):
        return [_constant(v) for v in value]
    if isinstance(value, frozenset):  # iteration order varies with string hashing
        return {"frozenset": sorted(json.dumps(_constant(v)) for v in value)}
    return repr(value)


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a cell not yet filled
        return None


def _describe_local_function(function: types.FunctionType) -> dict[str, Any]:
    """A lambda or local function by its name, a digest of its code, its defaults and the values
    it closes over (two lambdas that differ in a constant or a captured value differ)."""
    code = json.dumps(_code_parts(function.__code__)).encode()
    cells = zip(function.__code__.co_freevars, function.__closure__ or (), strict=True)
    return {
        "function": qualified_name(function),
        "code": hashlib.sha256(code).hexdigest()[:16],
        "defaults": describe(function.__defaults__),
        "kwdefaults": describe(function.__kwdefaults__),
        "closure": {name: describe(_cell_value(cell)) for name, cell in cells},
    }


def _describe_callable(target: Any) -> Any:
    """A class or function by its qualified name; a lambda or local function by its content."""
    if _is_local_function(target):
        return _describe_local_function(target)
    return qualified_name(target)


def _describe_object(value: Any) -> Any:
    """``value`` described by :func:`_describe_kind`, unless it is being described already."""
    describing = _DESCRIBING.get()
    if id(value) in describing:
        return {"recursive": qualified_name(type(value))}
    token = _DESCRIBING.set(describing | {id(value)})
    try:
        return _describe_kind(value)
    finally:
        _DESCRIBING.reset(token)


def _describe_kind(value: Any) -> Any:
    if callable(getattr(value, "audit_description", None)):
        return {"type": qualified_name(type(value)), **describe(value.audit_description())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        content = {f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": qualified_name(type(value)), **content}
    if isinstance(value, functools.partial):
        return {
            "partial": _describe_callable(value.func),
            "args": [describe(a) for a in value.args],
            "kwargs": {k: describe(v) for k, v in sorted(value.keywords.items())},
        }
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return _describe_callable(value)
    if type(value).__repr__ is object.__repr__ and hasattr(value, "__dict__"):
        # the default repr holds a memory address, which differs in every process
        return {"type": qualified_name(type(value)), "attributes": describe(vars(value))}
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
    if isinstance(value, np.ndarray):
        return _describe_array(value)
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [describe(v) for v in items]
    return _describe_object(value)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"a.b": value}`` (an empty mapping stays a value)."""
    items: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            items.update(flatten(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def differences(recorded: Mapping[str, Any], given: Mapping[str, Any], *, names=("has", "given")):
    """The settings two nested descriptions disagree on, one ``'key': <has> x, <given> y`` each
    (for error messages that name what changed rather than print both in full)."""
    old, new = flatten(recorded), flatten(given)
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k, ...) != new.get(k, ...)]
    return [
        f"{k!r}: {names[0]} {old.get(k, '(absent)')!r}, {names[1]} {new.get(k, '(absent)')!r}"
        for k in keys
    ]
