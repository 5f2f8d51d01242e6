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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from tda.checkpoints import Checkpoint, load_checkpoint
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
        if steps != sorted(steps):
            raise ValueError(f"checkpoints must be in training order (increasing steps): {steps}")

    def final_model(self) -> nn.Module:
        """The trained model (the last checkpoint), in eval mode."""
        return load_checkpoint(self.checkpoints[-1], self.model_factory()).eval()


@runtime_checkable
class RunAttributor(Protocol):
    """Fit to one training run, then score queries (``[n_query, n_train]``)."""

    def fit_run(self, run: TrainingRun) -> RunAttributor:
        """Prepare from ``run`` (its final model or its checkpoints); returns ``self``."""
        ...

    def score(self, queries: Examples) -> Tensor:
        """Scores ``[n_query, n_train]`` of ``queries`` against ``run.train``."""
        ...


def attribute_runs(
    attributor: RunAttributor, runs: Sequence[TrainingRun], queries: Examples
) -> Tensor:
    """Mean over ``runs`` of ``attributor.fit_run(run).score(queries)`` (``[n_query, n_train]``).

    Raises:
        ValueError: no runs, or runs with different training-set sizes.
    """
    if not runs:
        raise ValueError("attribute_runs needs at least one training run")
    sizes = sorted({len(run.train) for run in runs})
    if len(sizes) > 1:
        raise ValueError(f"the runs attribute to training sets of different sizes {sizes}")
    return mean_over_checkpoints(lambda run: attributor.fit_run(run).score(queries), runs)
