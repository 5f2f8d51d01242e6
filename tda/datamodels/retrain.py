"""Retraining on a subset of the training set and measuring the task output on query points.

A :class:`SubsetRetrainer` is the ``measure`` callable of
:meth:`tda.datamodels.GroundTruthStore.run`: given a subset mask and a seed, it trains a fresh model
(initialised from the seed) on the subset and returns the outputs (margins) on the queries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from tda.data.examples import Examples
from tda.models import build_model, model_dtype
from tda.outputs import task_outputs
from tda.task import ClassificationTask, Task
from tda.training import TrainConfig, train_on


@dataclass(frozen=True)
class MaskedTraining:
    """Trains ``model_factory()`` from a seed on the training examples a mask keeps: what the
    retrainers of subsets (:class:`SubsetRetrainer`) and of removals
    (:class:`tda.eval.RemovalRetrainer`) share.

    Args:
        model_factory: builds an untrained model; its initial weights are drawn from the seed,
            and it is cast to :func:`tda.models.model_dtype` (that of floating inputs).
        train_data: the full training set the masks index.
        queries: examples whose outputs are recorded.
        config: training settings (the same as the attributed model's, so the retrained models
            measure the same learning algorithm).
        task: defines the recorded output (the margin by default).
        aligned_batches: train in the full-data run's minibatches minus the left-out examples
            (``tda.train(keep=...)``), so that a retrained model is compared with the full model
            of the same seed without a reshuffle of every batch; default: reshuffle the kept
            examples.
    """

    model_factory: Callable[[], nn.Module]
    train_data: Examples
    queries: Examples
    config: TrainConfig = TrainConfig()
    task: Task = ClassificationTask()
    aligned_batches: bool = False

    def trained(self, keep: np.ndarray, seed: int) -> nn.Module:
        """The model of ``seed`` trained on ``train_data[keep]`` (a boolean or 0/1 mask)."""
        keep = boolean_mask(keep, len(self.train_data))
        model = build_model(self.model_factory, seed, dtype=model_dtype(self.train_data))
        train_on(
            model,
            self.train_data,
            keep,
            self.config,
            seed,
            self.task,
            self.aligned_batches,
        )
        return model


@dataclass(frozen=True)
class SubsetRetrainer(MaskedTraining):
    """Train on ``train_data[mask]`` with ``seed``; return the query outputs ``[n_query]``
    (fields: :class:`MaskedTraining`)."""

    def __call__(self, mask: np.ndarray, seed: int) -> np.ndarray:
        return task_outputs(self.trained(mask, seed), self.task, self.queries).double().numpy()


def boolean_mask(mask: np.ndarray, n_train: int) -> np.ndarray:
    """``mask`` as a boolean ``[n_train]`` array; 0/1 values (ints or floats) read as False/True.

    A 0/1 integer array must not reach ``Examples.subset``, which would read it as the
    positions 0 and 1.

    Raises:
        ValueError: a shape other than ``[n_train]``, or values other than booleans, 0 and 1.
    """
    mask = np.asarray(mask)
    if mask.shape != (n_train,):
        raise ValueError(
            f"mask must have shape ({n_train},), one entry per training example, got {mask.shape}"
        )
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError("mask must be boolean or hold only 0 and 1")
    return mask.astype(bool)
