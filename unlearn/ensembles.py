r"""Groups of models for unlearning benchmarks: originals on :math:`S`, oracles on :math:`R`.

Both are :func:`tda.ensemble.train_ensemble` ensembles, so they resume on disk: a model whose
final checkpoint exists is loaded, not trained again. Model ``s`` is initialised and trained with
seed ``s``. An oracle's wall-clock training time is kept beside it (``seconds-seed-<s>.json``),
because unlearning time is reported as a fraction of retraining time; one file per oracle lets
parallel jobs fill one directory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from tda.atomic import write_bytes_atomic
from tda.checkpoints import list_checkpoints
from tda.data.examples import Examples
from tda.ensemble import load_member, member_directory, train_ensemble
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
        seconds: wall-clock training seconds per model (``nan`` where none was recorded).
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


def _finished(member: Path, config: TrainConfig) -> bool:
    saved = list_checkpoints(member) if member.is_dir() else []
    return bool(saved) and saved[-1].epoch == config.epochs


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
    r"""Oracles retrained on :math:`R = S \setminus F`, one per seed, in their own directory."""
    retain = ForgetSplit.of(train, forget_request(forget_indices, train)).retain
    directory = oracle_directory(root, forget_indices)
    models, seconds = [], []
    for seed in seeds:
        record = _seconds_file(directory, seed)
        trained_before = _finished(member_directory(directory, seed), config)
        warm_up_torch()
        start = time.perf_counter()
        members = train_ensemble(
            model_factory, retain, config, [seed], directory, task=task, progress=False
        )
        if not trained_before:
            elapsed = {"seed": seed, "seconds": time.perf_counter() - start}
            write_bytes_atomic(record, json.dumps(elapsed).encode())
        seconds.append(json.loads(record.read_text())["seconds"] if record.exists() else math.nan)
        models.append(load_member(model_factory, members[seed][-1]))
    return OracleGroup(models, list(seeds), seconds)
