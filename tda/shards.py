"""The shard files of a :class:`~tda.store.FeatureStore`: names, paths, row checks, completeness.

A shard ``<index:06d>`` of one (checkpoint, split) is the data files ``<index>.<name>.npy`` and the
sidecar ``<index>.json`` that lists them (written last); see :mod:`tda.store` for the layout and
the atomic-write rules.
"""

from __future__ import annotations

import json
import operator
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

NAME = re.compile(r"[A-Za-z0-9_.-]+")
BFLOAT16 = "bfloat16"  # sidecar dtype of arrays kept as raw bfloat16 words ('<u2' on disk)
SIDECAR = re.compile(r"(\d+)\.json")


class StoreMismatchError(ValueError):
    """The store on disk does not match the model, config or data given."""


class IncompleteStoreError(RuntimeError):
    """Rows were requested that were never (completely and correctly) written."""


class CorruptShardError(IncompleteStoreError):
    """A shard's data file does not match the shape, dtype or sha256 its sidecar records."""


@dataclass(frozen=True)
class ShardInfo:
    """A complete shard: rows ``[start, stop)``; ``arrays``: name -> (shape, dtype like '<f4')."""

    checkpoint_id: str
    split: str
    index: int
    start: int
    stop: int
    arrays: dict[str, tuple[tuple[int, ...], str]]


def check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(
            f"{kind} {name!r} is not valid: use a non-empty name of letters, digits, '_', '-' "
            "and '.' that does not start with '.'"
        )
    return name


def check_index(index: Any) -> int:
    """A shard index as an int; negative ones are refused (their files would never be listed)."""
    index = operator.index(index)
    if index < 0:
        raise ValueError(f"shard index must be non-negative, got {index}")
    return index


def save_npy(array: np.ndarray, sink: Any) -> None:
    np.save(sink, array, allow_pickle=False)


def load_npy(path: Path) -> np.ndarray:
    """The array in the ``.npy`` file ``path``; a truncated or padded file is corrupt."""
    try:
        with open(path, "rb") as file:
            array = np.lib.format.read_array(file, allow_pickle=False)
            trailing = file.read(1)
    except (ValueError, EOFError) as error:  # numpy's words for a short header or data
        raise CorruptShardError(f"{path} is truncated or not an .npy file: {error}") from None
    if trailing:
        raise CorruptShardError(f"{path} has bytes past the end of its array")
    return array


def copy_into(source: Path, sink: Any) -> None:
    with open(source, "rb") as file:
        shutil.copyfileobj(file, sink)


def data_path(directory: Path, index: int, name: str) -> Path:
    return directory / f"{index:06d}.{name}.npy"


def complete_sidecar(directory: Path, index: int) -> dict | None:
    """The sidecar of shard ``index`` if it and all the data files it lists exist."""
    path = directory / f"{index:06d}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    for name in record["arrays"]:  # names become file names: refuse traversal from disk too
        check_name("array name", name)
    if not all(data_path(directory, index, name).is_file() for name in record["arrays"]):
        return None
    return record


def check_same_shard(directory: Path, index: int, record: dict) -> None:
    found = json.loads((directory / f"{index:06d}.json").read_text())
    if found != record:
        raise StoreMismatchError(
            f"shard {index} in {directory} holds rows [{found['start']}, {found['stop']}) with "
            f"other content than the rows [{record['start']}, {record['stop']}) given; a shard is "
            "written once: use a new store directory, or delete the shard's files to replace it"
        )


def as_array(name: str, value: Any) -> np.ndarray:
    check_name("array name", name)
    array = np.asarray(value)
    if array.dtype.hasobject or array.ndim == 0:
        raise ValueError(f"array {name!r} must be a non-object array with a first (example) axis")
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def check_rows(arrays: dict[str, np.ndarray], start: int, size: int, split: str) -> int:
    """Validate a shard's arrays for rows from ``start`` of a split of ``size``; return stop."""
    lengths = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"a shard needs one or more arrays with equal row counts, got {lengths}")
    stop = start + next(iter(lengths.values()))
    if stop == start or start < 0 or stop > size:
        raise ValueError(
            f"rows [{start}, {stop}) are not a non-empty part of {split!r} [0, {size})"
        )
    for name, array in arrays.items():
        if array.dtype.kind in "fc":
            bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"array {name!r} has a non-finite value (NaN or inf) at row "
                    f"{start + int(bad.argmax())}; fix the featurization before storing it"
                )
    return stop


def coverage_problems(shards: list[tuple[int, dict]], size: int) -> list[str]:
    problems, cursor = [], 0
    for index, record in shards:
        if record["start"] > cursor:
            problems.append(f"rows [{cursor}, {record['start']}) are missing")
        elif record["start"] < cursor:
            problems.append(f"shard {index} overlaps rows before {cursor}")
        cursor = max(cursor, record["stop"])
    if cursor < size:
        problems.append(f"rows [{cursor}, {size}) are missing")
    return problems


def encode(name: str, value: Any) -> tuple[np.ndarray, str]:
    """``(array as saved, dtype the sidecar records)``. A torch ``bfloat16`` tensor, which numpy
    cannot hold, is saved as its raw 16-bit words and recorded as ``"bfloat16"``."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
        words = value.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint16)
        return as_array(name, words), BFLOAT16
    array = as_array(name, value)
    return array, array.dtype.str


def decode(block: np.ndarray, dtype: str) -> np.ndarray:
    """A saved block as its values: ``bfloat16`` words widen exactly to float32."""
    if dtype == BFLOAT16:
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block


def dtype_name(dtype: str) -> str:
    """A sidecar dtype by name, for messages: ``"<f4"`` is ``"float32"``, ``"bfloat16"`` itself."""
    return dtype if dtype == BFLOAT16 else np.dtype(dtype).name


def saved_dtype(dtype: str) -> str:
    """The numpy dtype of the file that holds an array recorded as ``dtype``."""
    return np.dtype(np.uint16).newbyteorder("<").str if dtype == BFLOAT16 else dtype


def loaded_dtype(dtype: str) -> np.dtype:
    """The dtype :meth:`FeatureStore.load` returns for an array recorded as ``dtype``."""
    return np.dtype(np.float32) if dtype == BFLOAT16 else np.dtype(dtype)
