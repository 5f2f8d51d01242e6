r"""Attributors that read models instead of a feature store: one interface over training runs.

Store-based attributors (TRAK, gradient similarity) ``fit`` on precomputed features. Influence
functions, TracIn and Source instead differentiate the models themselves: the trained model, or
the checkpoints along its training. A :class:`TrainingRun` holds what any of them may need (a model
factory, the run's checkpoints in training order, the training set) and each implements
:class:`RunAttributor`'s ``fit_run``, so :func:`attribute_runs` scores an ensemble of runs
without knowing the method:

.. math:: \tau(x) = \frac1M \sum_{m=1}^{M} \tau_m(x),

the mean over the runs (independently trained members) of each run's scores, as
:func:`tda.methods.base.mean_over_checkpoints` ensembles the store-based methods.
:class:`CheckpointAverage` wraps a method that reads the final model (influence functions) so
that each run contributes the mean over its last checkpoints instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from tda.checkpoints import Checkpoint, load_fresh_model
from tda.data.examples import Examples
from tda.methods.base import mean_over_checkpoints


@dataclass(frozen=True)
class TrainingRun:
    """One trained model's history.

    Attributes:
        model_factory: builds the architecture (weights are loaded from the checkpoints).
        checkpoints: the run's checkpoints in training order; the last is the trained model (a
            first one of the starting parameters is allowed, see ``TrainConfig.save_initial``).
        train: the training set the run was trained on (the attributed examples).
    """

    model_factory: Callable[[], nn.Module]
    checkpoints: tuple[Checkpoint, ...]
    train: Examples

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ValueError("a training run needs at least one checkpoint (its trained model)")
        steps = [c.step for c in self.checkpoints]
        if any(later <= earlier for earlier, later in zip(steps[:-1], steps[1:], strict=True)):
            raise ValueError(f"checkpoints must be in training order (increasing steps): {steps}")

    def final_model(self) -> nn.Module:
        """The trained model (the last checkpoint), in eval mode."""
        return load_fresh_model(self.model_factory, self.checkpoints[-1]).eval()


@runtime_checkable
class RunAttributor(Protocol):
    """Fit to one training run, then score queries (``[n_query, n_train]``)."""

    def fit_run(self, run: TrainingRun) -> RunAttributor:
        """Prepare from ``run`` (its final model or its checkpoints); returns ``self``."""
        ...

    def score(self, queries: Examples) -> Tensor:
        """Scores ``[n_query, n_train]`` of ``queries`` against ``run.train``."""
        ...


@dataclass
class CheckpointAverage:
    r"""A model-based attributor averaged over the last checkpoints of each run.

    ``fit_run(run)`` fits an independent copy of ``attributor`` (through its ``fit_run``) to the run
    cut at each of its last ``last`` checkpoints (the run as if training had stopped there), and
    ``score`` returns the mean of their scores:

    .. math:: \tau(x) = \frac1K \sum_{k=1}^{K} \tau^{(\theta_k)}(x),

    where :math:`\theta_1, \dots, \theta_K` are the chosen checkpoints. A checkpoint of the
    starting parameters (``segment_steps == 0``, ``TrainConfig(save_initial=True)``) closes no
    optimiser steps and is never used. With :func:`attribute_runs` the ensemble is the mean over
    runs and checkpoints (``M`` models, ``M * K`` fits).

    Args:
        attributor: a :class:`RunAttributor` that reads the run's final model (e.g.
            :class:`~tda.methods.InfluenceFunction`); deep-copied for every checkpoint, never
            fitted itself.
        last: how many of the last trained checkpoints to average (default: all of them).
    """

    attributor: RunAttributor
    last: int | None = None
    fitted: list[RunAttributor] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.last is not None and self.last < 1:
            raise ValueError(f"last must be at least 1 checkpoint, got {self.last}")

    def checkpoints(self, run: TrainingRun) -> tuple[Checkpoint, ...]:
        """The checkpoints of ``run`` that are averaged, in training order.

        Raises:
            ValueError: ``last`` is more than the run's trained checkpoints (or it has none).
        """
        trained = tuple(c for c in run.checkpoints if c.segment_steps > 0)
        count = len(trained) if self.last is None else self.last
        if count > len(trained) or not trained:
            raise ValueError(
                f"cannot average the last {count} checkpoints of a run with {len(trained)} "
                "trained checkpoints (a checkpoint of the starting parameters is not counted)"
            )
        return trained[-count:]

    def fit_run(self, run: TrainingRun) -> CheckpointAverage:
        """Fit a copy of ``attributor`` to the run truncated at each chosen checkpoint."""
        position = {checkpoint: index for index, checkpoint in enumerate(run.checkpoints)}
        cut = [run.checkpoints[: position[c] + 1] for c in self.checkpoints(run)]
        self.fitted = [
            copy.deepcopy(self.attributor).fit_run(replace(run, checkpoints=checkpoints))
            for checkpoints in cut
        ]
        return self

    def score(self, queries: Examples) -> Tensor:
        """Mean of the fitted copies' scores ``[n_query, n_train]``.

        Raises:
            RuntimeError: called before ``fit_run``.
        """
        if not self.fitted:
            raise RuntimeError("call fit_run(run) before scoring")
        return mean_over_checkpoints(lambda fitted: fitted.score(queries), self.fitted)

    def config(self) -> dict:
        """The wrapped attributor's configuration and the number of checkpoints averaged."""
        inner = getattr(self.attributor, "config", None)
        return {
            "method": "checkpoint_average",
            "last": self.last,
            "attributor": inner() if callable(inner) else repr(self.attributor),
        }


def attribute_runs(
    attributor: RunAttributor, runs: Sequence[TrainingRun], queries: Examples
) -> Tensor:
    """Mean over ``runs`` of ``attributor.fit_run(run).score(queries)`` (``[n_query, n_train]``).

    Raises:
        ValueError: no runs, runs on different training sets (their scores' columns would
            name different examples), or a run listed twice (the same checkpoint files).
    """
    if not runs:
        raise ValueError("attribute_runs needs at least one training run")
    sizes = sorted({len(run.train) for run in runs})
    if len(sizes) > 1:
        raise ValueError(f"the runs attribute to training sets of different sizes {sizes}")
    if len({run.train.fingerprint() for run in runs}) > 1:
        raise ValueError("the runs attribute to different training sets of the same size")
    _check_runs_listed_once(runs)
    return mean_over_checkpoints(lambda run: attributor.fit_run(run).score(queries), runs)


def _check_runs_listed_once(runs: Sequence[TrainingRun]) -> None:
    """Raise ``ValueError`` naming a run whose checkpoint files repeat an earlier run's."""
    seen: dict[tuple[Path, ...], int] = {}
    for index, run in enumerate(runs):
        paths = tuple(Path(c.path).resolve() for c in run.checkpoints)
        if paths in seen:
            raise ValueError(
                f"run {index} repeats run {seen[paths]} (the same checkpoints, ending at "
                f"{paths[-1]}); each run is counted once in the ensemble mean"
            )
        seen[paths] = index
