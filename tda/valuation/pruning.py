r"""Data pruning curves: remove the lowest-value training examples, retrain, measure test accuracy.

For each fraction :math:`f` and seed :math:`s`, two models are trained from the same
initialisation and shuffling seed :math:`s` (a paired comparison):

* ``"value"``: without the :math:`\lfloor f n \rfloor` lowest-value examples (ties by index);
* ``"random"``: without the first :math:`\lfloor f n \rfloor` examples of a random permutation
  drawn from seed :math:`s` (nested: a larger fraction removes a superset).

Fraction 0 (the full data) is trained once per seed and shared by both curves. Each run is
written atomically to ``workspace/<strategy>-<removed count>-seed<s>.json`` (``full-0-seed<s>``
for the full data) and skipped when it is already there, so an interrupted curve resumes; a run
recorded for another model (architecture or initial weights), other data, another removal set or
other training settings is refused. A record named by its fraction (``value-0.100-seed0.json``,
the name before) is read when it records the very same run.
Accuracy is a count ratio (correct over counted test predictions, in float64); intervals are
Student-t intervals of the mean over seeds, clipped to [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import t as student_t
from torch import Tensor, nn
from tqdm.auto import tqdm

from tda.arguments import check_open_unit
from tda.atomic import write_bytes_atomic
from tda.data.examples import Examples
from tda.describe import describe
from tda.fingerprint import model_fingerprint
from tda.models import build_model, model_dtype
from tda.outputs import accuracy
from tda.task import IGNORE_INDEX, ClassificationTask, Task
from tda.training import TrainConfig, train
from tda.valuation.values import require_finite

STRATEGIES = ("value", "random")


@dataclass(frozen=True)
class PruningCurve:
    """Test accuracy ``[n_fractions, n_seeds]`` per strategy after removing each fraction."""

    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    accuracy: dict[str, np.ndarray]
    confidence: float = 0.95

    def __post_init__(self) -> None:
        check_open_unit("confidence", self.confidence)

    def mean(self, strategy: str) -> np.ndarray:
        """Mean accuracy over seeds ``[n_fractions]``."""
        return self.accuracy[strategy].mean(axis=1)

    def interval(self, strategy: str) -> tuple[np.ndarray, np.ndarray]:
        """Student-t interval of the mean over seeds, clipped to [0, 1] (zero width with one seed).

        An accuracy lies in [0, 1], but with few seeds the t interval reaches past it (two seeds
        at 0.92 and 0.94 give 0.93 +- 0.11 at 95%); the clipped part holds no possible mean.
        """
        values = self.accuracy[strategy]
        if values.shape[1] < 2:
            return values.mean(1), values.mean(1)
        half = student_t.ppf((1 + self.confidence) / 2, values.shape[1] - 1)
        half = half * values.std(axis=1, ddof=1) / np.sqrt(values.shape[1])
        return np.clip(values.mean(1) - half, 0.0, 1.0), np.clip(values.mean(1) + half, 0.0, 1.0)

    def as_dict(self) -> dict:
        """JSON-able: per strategy the per-seed accuracies, means and intervals."""
        curves = {}
        for strategy in self.accuracy:
            low, high = self.interval(strategy)
            curves[strategy] = {
                "accuracy": self.accuracy[strategy].tolist(),
                "mean": self.mean(strategy).tolist(),
                "ci_low": low.tolist(),
                "ci_high": high.tolist(),
            }
        return {
            "fractions": list(self.fractions),
            "seeds": list(self.seeds),
            "confidence": self.confidence,
            "curves": curves,
        }

    def __str__(self) -> str:
        """One line per strategy: mean test accuracy at each removed fraction."""
        lines = []
        for strategy in self.accuracy:
            cells = ", ".join(
                f"{100 * f:g}%: {100 * a:.1f}%"
                for f, a in zip(self.fractions, self.mean(strategy), strict=True)
            )
            lines.append(f"{strategy} removal, test accuracy [{cells}]")
        return "\n".join(lines)


def removal_order(values: Tensor | np.ndarray, strategy: str, seed: int) -> np.ndarray:
    """Training indices in the order they are removed: lowest value first, or a permutation."""
    values = np.asarray(torch.as_tensor(values).cpu(), dtype=np.float64)
    if strategy == "value":
        return np.argsort(values, kind="stable")
    if strategy == "random":
        return np.random.default_rng(seed).permutation(len(values))
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def removed_count(fraction: float, n_train: int) -> int:
    r""":math:`\lfloor f n \rfloor`, robust to the rounding of ``f`` (0.29 * 100 removes 29)."""
    return int(np.floor(fraction * n_train + 1e-9))


def pruning_curve(
    model_factory: Callable[[], nn.Module],
    train_data: Examples,
    test_data: Examples,
    values: Tensor | np.ndarray,
    *,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    seeds: Sequence[int] = (0, 1, 2),
    config: TrainConfig | None = None,
    task: Task = ClassificationTask(),
    workspace: str | os.PathLike | None = None,
    confidence: float = 0.95,
    progress: bool = True,
) -> PruningCurve:
    """Accuracy after removing each fraction by value and at random (module docstring).

    Args:
        model_factory: builds an untrained model; initialised from each seed.
        train_data: the training set the values refer to, ``values[i]`` for example ``i``.
        test_data: held-out examples the accuracy is measured on.
        values: ``[n_train]``; the lowest are removed first. For self-influence, pass its negative.
        fractions: fractions removed, in (0, 1); 0 (the full data) is always added.
        seeds: training seeds (and random-removal seeds).
        config: how each model is trained (default ``TrainConfig()``).
        task: training loss.
        workspace: directory for resumable per-run records (``None``: keep nothing on disk).
        confidence: level of the intervals.
        progress: show a progress bar (default, as training and featurizing do).

    Raises:
        ValueError: bad fractions, seeds, values or confidence, or a workspace holding other runs.
    """
    check_open_unit(
        "confidence", confidence
    )  # before any training: a bad level would give NaN intervals
    values = _checked_values(values, len(train_data))
    _counted_targets(test_data)  # before any training: no accuracy without a counted target
    config = TrainConfig() if config is None else config
    fractions, seeds = _checked_fractions(fractions), _checked_seeds(seeds)
    runs = [(s, f, seed) for f in fractions for s in STRATEGIES for seed in seeds]
    runs = [(s, f, seed) for s, f, seed in runs if f > 0 or s == "value"]
    results = {}
    for strategy, fraction, seed in tqdm(runs, desc="pruning", disable=not progress):
        removed = removal_order(values, strategy, seed)[: removed_count(fraction, len(train_data))]
        results[strategy, fraction, seed] = _run(
            model_factory,
            train_data,
            test_data,
            removed,
            seed,
            config,
            task,
            _record_paths(workspace, strategy, fraction, len(removed), seed),
        )
    table = {
        s: np.array(
            [[results[("value" if f == 0 else s), f, seed] for seed in seeds] for f in fractions]
        )
        for s in STRATEGIES
    }
    return PruningCurve(tuple(fractions), tuple(seeds), table, confidence)


def _run(model_factory, train_data, test_data, removed, seed, config, task, paths) -> float:
    """Test accuracy of a model trained without ``removed``; read from or written to the record
    path (``paths``: it and the name records had before, or ``None``)."""
    model = build_model(model_factory, seed, dtype=model_dtype(train_data))
    identity = {
        "initial_model": model_fingerprint(model),  # the architecture and its seeded weights
        "train": train_data.fingerprint(),
        "test": test_data.fingerprint(),
        "removed": hashlib.sha256(np.sort(removed).astype(np.int64).tobytes()).hexdigest(),
        "seed": seed,
        "train_settings": describe(config),
        "task": describe(task),
    }
    path, before = paths or (None, None)
    record = _recorded_run(path, before, identity)
    if record is not None:
        # Snapped to the count ratio it measured: older records hold float32 means.
        total = _counted_targets(test_data)
        return round(float(record["accuracy"]) * total) / total
    keep = np.setdiff1d(np.arange(len(train_data)), removed)
    model = train(model, train_data.subset(keep), config, seed=seed, task=task).model
    result = accuracy(model, test_data)
    if path is not None:
        record = {**identity, "accuracy": result, "n_removed": len(removed)}
        write_bytes_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
    return result


def _recorded_run(path: Path | None, before: Path | None, identity: dict) -> dict | None:
    """The record of the run ``identity`` describes: at ``path``, refused if another run's; else
    at ``before``, its name by fraction to 3 decimals, only if it records this very run (fractions
    that round alike shared that name); ``None`` where there is none."""
    if path is not None and path.exists():
        record = json.loads(path.read_text())
        differing = [key for key in identity if record.get(key) != identity[key]]
        if differing:
            raise ValueError(
                f"{path} records a run of another model, on other data, another removal set or "
                f"other training settings (differing: {', '.join(differing)}); use another "
                "workspace for these values"
            )
        return record
    if before is not None and before.exists():
        record = json.loads(before.read_text())
        if all(record.get(key) == identity[key] for key in identity):
            return record
    return None


def _counted_targets(test_data: Examples) -> int:
    """Test targets that count towards accuracy (not :data:`~tda.task.IGNORE_INDEX`)."""
    total = int((test_data.targets != IGNORE_INDEX).sum())
    if total == 0:
        raise ValueError("accuracy needs at least one test example with a counted target")
    return total


def _record_paths(
    workspace, strategy: str, fraction: float, count: int, seed: int
) -> tuple[Path, Path] | None:
    """The run's record, named by the removed count, and the name by fraction it had before."""
    if workspace is None:
        return None
    name, directory = ("full" if fraction == 0 else strategy), Path(workspace)
    by_count = directory / f"{name}-{count}-seed{seed}.json"
    return by_count, directory / f"{name}-{fraction:.3f}-seed{seed}.json"


def _checked_values(values, n_train: int) -> Tensor:
    values = torch.as_tensor(values)
    if values.shape != (n_train,):
        raise ValueError(
            f"values must be [{n_train}] (one per training example), got {tuple(values.shape)}"
        )
    return require_finite("values", values)


def _checked_fractions(fractions: Sequence[float]) -> list[float]:
    fractions = [float(f) for f in fractions]  # numpy arrays and scalars as Python floats
    bad = [f for f in fractions if not 0.0 < f < 1.0]
    if bad or not fractions:
        raise ValueError(f"fractions must be a non-empty list in (0, 1), got {fractions}")
    return [0.0, *sorted(set(fractions))]


def _checked_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as Python ints (numpy's are not JSON serialisable), distinct and non-empty."""
    try:
        seeds = [operator.index(seed) for seed in seeds]
    except TypeError as error:
        raise TypeError(f"seeds must be integers, got {[*seeds]}") from error
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list without repeats, got {seeds}")
    return seeds
