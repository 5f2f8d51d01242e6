r"""Groups of models for unlearning benchmarks: originals on :math:`S`, oracles on :math:`R`.

Both are :func:`tda.ensemble.train_ensemble` ensembles, so they resume on disk: a model whose
final checkpoint exists is loaded, not trained again. Model ``s`` is initialised and trained with
seed ``s``. An oracle's wall-clock training time is kept beside it (``seconds-seed-<s>.json``),
because unlearning time is reported as a fraction of retraining time; one file per oracle lets
parallel jobs fill one directory. It is written after the oracle's final checkpoint, so an oracle
found finished without it (its process was killed in between) is trained again, in a scratch
directory, to measure it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from torch import nn

from tda.atomic import write_bytes_atomic
from tda.data.examples import Examples
from tda.ensemble import finished_checkpoints, load_member, member_directory, train_ensemble
from tda.fingerprint import array_fingerprint
from tda.task import ClassificationTask, Task
from tda.timing import warm_up_torch
from tda.training import TrainConfig
from unlearn.forget_sets import forget_request
from unlearn.methods.base import ForgetSplit


def load_or_train(
    model_factory: Callable[[], nn.Module],
    data: Examples,
    config: TrainConfig,
    seeds: Sequence[int],
    root: str | os.PathLike,
    *,
    task: Task = ClassificationTask(),
) -> list[nn.Module]:
    """One model per seed trained on ``data`` in ``root`` (finished ones are loaded), eval mode."""
    members = train_ensemble(model_factory, data, config, seeds, root, task=task, progress=False)
    return [load_member(model_factory, members[seed][-1]) for seed in seeds]


@dataclass(frozen=True)
class OracleGroup:
    """Models retrained from scratch on the retain set, with their training times.

    Attributes:
        models: one per seed, in seed order.
        seeds: their seeds.
        seconds: wall-clock training seconds per model.
    """

    models: list[nn.Module]
    seeds: list[int]
    seconds: list[float]


def oracle_directory(root: str | os.PathLike, forget_indices: np.ndarray) -> Path:
    """``root/forget-<16 hex digits of the forget set's fingerprint>``: one per forget set."""
    digest = array_fingerprint(np.asarray(forget_indices, dtype=np.int64))[:16]
    return Path(root) / f"forget-{digest}"


def _seconds_file(directory: Path, seed: int) -> Path:
    return directory / f"seconds-seed-{seed}.json"


def load_or_train_oracles(
    model_factory: Callable[[], nn.Module],
    train: Examples,
    forget_indices: np.ndarray,
    config: TrainConfig,
    seeds: Sequence[int],
    root: str | os.PathLike,
    *,
    task: Task = ClassificationTask(),
) -> OracleGroup:
    r"""Oracles retrained on :math:`R = S \setminus F`, one per seed, in their own directory,
    with their training times (an oracle finished without one is trained again to measure it)."""
    retain = ForgetSplit.of(train, forget_request(forget_indices, train)).retain
    directory = oracle_directory(root, forget_indices)
    timed = [_timed_oracle(model_factory, retain, config, seed, directory, task) for seed in seeds]
    models, seconds = [model for model, _ in timed], [elapsed for _, elapsed in timed]
    return OracleGroup(models, list(seeds), seconds)


def _timed_oracle(
    model_factory: Callable[[], nn.Module],
    retain: Examples,
    config: TrainConfig,
    seed: int,
    directory: Path,
    task: Task,
) -> tuple[nn.Module, float]:
    """Oracle ``seed`` trained on ``retain`` in ``directory`` (or loaded, if finished) and its
    recorded training seconds.

    The time is recorded after the final checkpoint, so a process killed in between leaves a
    finished oracle without one; it is then measured by training the same oracle again in a
    scratch directory (the finished one, which a parallel job may be reading, is left alone).
    """
    record = _seconds_file(directory, seed)
    trained_before = finished_checkpoints(member_directory(directory, seed), config) is not None
    train_here = partial(train_ensemble, model_factory, retain, config, [seed], task=task)
    if trained_before and not record.exists():
        with tempfile.TemporaryDirectory(prefix="oracle-timing-") as scratch:
            _timed(lambda: train_here(scratch, progress=False), record, seed)
    members = (
        train_here(directory, progress=False)
        if trained_before
        else _timed(lambda: train_here(directory, progress=False), record, seed)
    )
    model = load_member(model_factory, members[seed][-1])
    return model, json.loads(record.read_text())["seconds"]


def _timed(training: Callable[[], dict], record: Path, seed: int) -> dict:
    """Run ``training`` and record its wall-clock seconds in ``record``; returns its result."""
    warm_up_torch()
    start = time.perf_counter()
    members = training()
    elapsed = {"seed": seed, "seconds": time.perf_counter() - start}
    write_bytes_atomic(record, json.dumps(elapsed).encode())
    return members
