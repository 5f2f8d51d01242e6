"""Score matrices too large for memory, written to a memory-mapped ``.npy`` block by block.

``TRAK.score`` and the other store-based attributors return ``[n_query, n_train]`` in memory. For
large query sets, :func:`write_scores` asks the attributor for ``query_chunk`` queries at a time and
writes each block into an ``.npy`` file opened as a memory map, so peak memory is one block, never
the whole matrix. The file is written under a temporary name and published atomically when
complete; :func:`open_scores` maps it read-only (``np.load(mmap_mode="r")``, no pickle). Streaming
top-k over the result is :func:`tda.ranking.top_examples`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from torch import Tensor
from tqdm.auto import tqdm

from tda.atomic import (
    file_digest,
    fsync_directory,
    make_directories,
    write_atomic,
    write_bytes_atomic,
)

ScoreFunction = Callable[[Sequence[int]], Tensor]


def write_scores(
    score: ScoreFunction,
    n_query: int,
    path: str | os.PathLike,
    *,
    query_chunk: int = 1024,
    dtype: np.dtype | type = np.float32,
    progress: bool = True,
) -> np.memmap:
    """Write ``score(indices)`` for every block of query indices into ``path`` (``.npy``).

    Args:
        score: returns scores ``[len(indices), n_train]`` for query indices, e.g.
            ``lambda rows: trak.score("test", indices=rows)``.
        n_query: number of queries.
        path: destination ``.npy`` file; replaced atomically once every block is written.
        query_chunk: queries per block (bounds memory at ``query_chunk * n_train``).
        dtype: storage dtype.

    Returns:
        The finished matrix, memory-mapped read-only.

    Raises:
        ValueError: non-positive sizes, or a block that is not ``[len(indices), n_train]``.
    """
    if n_query < 1 or query_chunk < 1:
        raise ValueError(f"n_query ({n_query}) and query_chunk ({query_chunk}) must be positive")
    path = Path(path)
    make_directories(path.parent)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    temporary, matrix = Path(name), None
    try:
        for start in tqdm(range(0, n_query, query_chunk), desc="score", disable=not progress):
            rows = list(range(start, min(start + query_chunk, n_query)))
            block = score(rows).detach().cpu().numpy()
            _check_block(block, rows, None if matrix is None else matrix.shape[1])
            if matrix is None:
                shape = (n_query, block.shape[1])
                matrix = open_memmap(temporary, mode="w+", dtype=dtype, shape=shape)
            matrix[start : start + len(rows)] = block
        matrix.flush()
        del matrix
        _fsync(temporary)
        os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()
    return open_scores(path)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def save_scores(path: str | os.PathLike, scores: np.ndarray, record: dict) -> Path:
    """Publish ``scores`` at ``path`` (``.npy``, appended to a name that ends otherwise) and
    ``record`` (how they were made) beside it as ``.json``, with the scores' sha256 added;
    returns the ``.npy`` path.

    The old record is removed first and both files are published atomically, so a killed run
    leaves either the old pair, or new scores with no record (which readers refuse), never new
    scores beside an old record.
    """
    path = _npy_path(path)
    record_path = path.with_suffix(".json")
    record_path.unlink(missing_ok=True)
    digest = write_atomic(path, lambda sink: np.save(sink, scores, allow_pickle=False))
    text = json.dumps({**record, "sha256": digest}, indent=2) + "\n"
    write_bytes_atomic(record_path, text.encode())
    return path


def read_scores(path: str | os.PathLike, *, mmap: bool = False) -> tuple[np.ndarray, dict]:
    """Scores saved by :func:`save_scores` and their record, checked against each other.

    Args:
        path: the ``.npy`` file (appended to a name that ends otherwise, as
            :func:`save_scores` does; its record is the ``.json`` beside it).
        mmap: map the scores read-only instead of reading them into memory.

    Raises:
        FileNotFoundError: the scores or their record are missing (a run killed between the
            two, or scores never saved with a record).
        ValueError: the scores' sha256 differs from the one recorded (changed or replaced since).
    """
    path = _npy_path(path)
    record_path = path.with_suffix(".json")
    for needed in (path, record_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: make the scores with save_scores")
    record = json.loads(record_path.read_text())
    recorded = record.get("sha256")  # None: saved before records carried it
    if recorded is not None and recorded != file_digest(path):
        raise ValueError(f"{path} differs from the scores its record {record_path} describes")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False), record


def _npy_path(path: str | os.PathLike) -> Path:
    """``path`` ending in ``.npy``: appended, so that a dotted name (``trak-damping0.1``) keeps
    its dots instead of losing what follows the last one."""
    path = Path(path)
    return path if path.suffix == ".npy" else path.with_name(f"{path.name}.npy")


def _check_block(block: np.ndarray, rows: list[int], n_train: int | None) -> None:
    """Refuse a block that is not ``[len(rows), n_train]`` (numpy would broadcast a single row)."""
    width = block.shape[1] if block.ndim == 2 and n_train is None else n_train
    if block.ndim != 2 or block.shape != (len(rows), width):
        raise ValueError(
            f"score returned a block of shape {list(block.shape)} for queries "
            f"[{rows[0]}, {rows[-1] + 1}); expected [{len(rows)}, {width or 'n_train'}]"
        )


def open_scores(path: str | os.PathLike) -> np.memmap:
    """A score matrix written by :func:`write_scores`, memory-mapped read-only."""
    return np.load(path, mmap_mode="r", allow_pickle=False)
