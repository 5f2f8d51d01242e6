r"""Predictor from linear datamodels fit on a subset-retraining store (Ilyas et al. 2022).

Models retrained on random subsets (masks :math:`X \in \{0,1\}^{S\times n}`) record their logits
on every training point (:class:`TrainingLogits`, a :class:`tda.datamodels.GroundTruthStore`
measure). A ridge regression :math:`Y \approx b + X\beta` per output, solved in its dual form,

.. math:: \beta = X_c^\top (X_c X_c^\top + \lambda I)^{-1} Y_c,

(:math:`X_c, Y_c` centred over subsets) never forms :math:`\beta` (``[n, n, C]``) for the effect
of a forget set: :math:`\sum_{i\in F}\beta_i = w^\top Y_c` with
:math:`w = (X_cX_c^\top + \lambda I)^{-1} X_c 1_F`. :math:`\lambda` is relative to the mean
diagonal of :math:`X_cX_c^\top` and, when a grid is given, chosen on held-out subsets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.datamodels import GroundTruthStore, sample_subsets
from tda.describe import describe
from tda.fingerprint import array_fingerprint
from tda.models import build_model, model_dtype
from tda.outputs import logits_of
from tda.task import ClassificationTask
from tda.training import TrainConfig, train
from unlearn.predictors.base import (
    Output,
    PredictorScope,
    ShiftPredictor,
    architecture,
    training_set,
)


@dataclass(frozen=True)
class TrainingLogits:
    """Ground-truth measure: train on ``train[mask]`` from ``seed``; logits on all of ``train``.

    Returns the logits flattened to ``[n * C]`` (a :class:`GroundTruthStore` records 1-D rows).
    """

    model_factory: Callable[[], nn.Module]
    train: Examples
    config: TrainConfig

    def __call__(self, mask: np.ndarray, seed: int) -> np.ndarray:
        model = build_model(self.model_factory, seed, dtype=model_dtype(self.train))
        train(model, self.train.subset(np.asarray(mask)), self.config, seed=seed)
        return logits_of(model, self.train).double().reshape(-1).numpy()


def subset_logits(store: GroundTruthStore, train: Examples, output: Output) -> np.ndarray:
    """Seed-averaged outputs ``[S, n, C]`` (logits) or ``[S, n]`` (margins) from ``store``.

    Raises:
        ValueError: ``store`` was retrained on subsets of another training set than ``train``.
    """
    if store.masks.shape[1] != len(train) or store.train_fingerprint not in (
        None,  # a store made before training sets were recorded: its size is all there is
        train.fingerprint(),
    ):
        raise ValueError(
            f"the ground truth in {store.root} holds models retrained on subsets of another "
            f"training set ({store.masks.shape[1]} examples) than the {len(train)} given"
        )
    logits = store.outputs().mean(axis=1).reshape(len(store.masks), len(train), -1)
    if output == "logits":
        return logits
    margins = ClassificationTask().output(torch.from_numpy(logits), train.targets.cpu())
    return margins.numpy()


def _check_finite_masks(masks: np.ndarray) -> None:
    """Refuse subset masks with a NaN or infinite entry: it would make every effect NaN."""
    bad = ~np.isfinite(masks.astype(np.float64))
    if bad.any():
        subset, example = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"training example {example} has no scores: its membership in subset {subset} is "
            f"{masks[subset, example]}, not finite; the datamodels cannot be fit"
        )


def _centred(values: np.ndarray) -> Tensor:
    array = torch.from_numpy(np.asarray(values, dtype=np.float64))
    return array - array.mean(dim=0)


def _ridge_inverse(masks_c: Tensor, ridge: float) -> Tensor:
    kernel = masks_c @ masks_c.T
    shift = ridge * float(torch.diagonal(kernel).mean())
    return torch.linalg.inv(kernel + shift * torch.eye(len(kernel), dtype=kernel.dtype))


def select_ridge(masks: np.ndarray, outputs: np.ndarray, grid: Sequence[float]) -> float:
    """The ridge with the lowest squared error on the last fifth of the subsets, fit on the rest."""
    if not grid:
        raise ValueError("the ridge grid is empty")
    cut = len(masks) - max(1, len(masks) // 5)
    if cut < 2:
        raise ValueError(f"need at least 3 subsets to select the ridge, got {len(masks)}")
    x = torch.from_numpy(np.asarray(masks, dtype=np.float64))
    y = torch.from_numpy(np.asarray(outputs, dtype=np.float64)).reshape(len(masks), -1)
    x_mean, y_mean = x[:cut].mean(0), y[:cut].mean(0)

    def error(ridge: float) -> float:
        weights = _ridge_inverse(x[:cut] - x_mean, ridge) @ (y[:cut] - y_mean)
        predicted = y_mean + (x[cut:] - x_mean) @ (x[:cut] - x_mean).T @ weights
        return float(((predicted - y[cut:]) ** 2).mean())

    return min(grid, key=error)


@dataclass
class DatamodelPredictor(ShiftPredictor):
    """Shift outputs by the datamodels' summed forget-set weights.

    :meth:`settings` (and so the audit record and a tuning journal's key) holds the number of
    subsets, the ridge and ``fit_fingerprint``, the :func:`~tda.fingerprint.array_fingerprint` of
    ``masks`` and ``outputs`` as given: with the ridge, they decide every prediction, so two
    predictors fit on different subsets or outputs are never described alike.

    Attributes:
        masks: subset masks ``[S, n]``.
        outputs: outputs of the models trained on them, ``[S, n, C]`` or ``[S, n]``.
        ridge: relative ridge :math:`\\lambda`.
    """

    masks: np.ndarray | None = None
    outputs: np.ndarray | None = None
    ridge: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        masks, outputs = np.asarray(self.masks), np.asarray(self.outputs)
        n = self.scope.train_size
        if masks.ndim != 2 or masks.shape[1] != n or outputs.shape[:2] != (len(masks), n):
            raise ValueError(
                f"masks must be [S, {n}] and outputs [S, {n}, ...]; got {masks.shape} and "
                f"{outputs.shape}"
            )
        _check_finite_masks(masks)
        if (outputs.ndim == 3) != (self.output == "logits"):
            raise ValueError(f"{self.output} outputs have the wrong rank: {outputs.shape}")
        # hashed once: the fit reads the arrays only here, so later edits to them change nothing
        self._fit_fingerprint = array_fingerprint(masks, outputs)
        self._masks_c = _centred(masks)
        self._outputs_c = _centred(outputs)
        self._inverses: dict[float, Tensor] = {}
        self._inverse()  # a bad ridge is refused now

    def settings(self) -> dict:
        return {
            "subsets": len(self._masks_c),
            "ridge": self.ridge,
            "fit_fingerprint": self._fit_fingerprint,
        }

    def _inverse(self) -> Tensor:
        """The regularised inverse for the current ``ridge`` (set in place, it takes effect)."""
        if not 0 < self.ridge < float("inf"):
            raise ValueError(f"ridge must be positive and finite, got {self.ridge}")
        if self.ridge not in self._inverses:
            self._inverses = {self.ridge: _ridge_inverse(self._masks_c, self.ridge)}
        return self._inverses[self.ridge]

    def effect(self, forget_indices: np.ndarray) -> Tensor:
        weights = self._inverse() @ self._masks_c[:, torch.as_tensor(forget_indices)].sum(dim=1)
        return torch.tensordot(weights, self._outputs_c, dims=1)

    def margin_scores(self) -> Tensor:
        """Datamodel weights as scores ``[n_query, n_train]`` (margin output only)."""
        if self.output != "margin":
            raise ValueError("margin_scores needs a margin predictor")
        return (self._masks_c.T @ self._inverse() @ self._outputs_c).T


def _store_recipe(shape: str, config: TrainConfig) -> dict[str, Any]:
    """What a subset-retraining store of training-point logits holds: the measure, the
    :func:`architecture` of its models and their training settings. A store made under another
    recipe is refused (:meth:`GroundTruthStore.create_or_open`) rather than reused."""
    return {"output": "training-point logits", "architecture": shape, "train": describe(config)}


def datamodel_predictor(
    model_factory,
    data: Any,
    config: TrainConfig,
    root: str | os.PathLike,
    *,
    count: int,
    alpha: float,
    seeds: Sequence[int] = (0,),
    fit_subsets: int | None = None,
    subset_seed: int = 0,
    ridge_grid: Sequence[float] = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
    output: Output = "logits",
    scale: float = 1.0,
    forget_scale: float | None = None,
    progress: bool = False,
) -> DatamodelPredictor:
    """Retrain on ``count`` random ``alpha``-subsets (resumable) and fit datamodels.

    Args:
        root: the :class:`GroundTruthStore` of training-point logits; it records the models'
            architecture and training settings, and a store made under others is refused.
        fit_subsets: use only the first ``fit_subsets`` subsets (the rest can serve as held-out
            ground truth, e.g. for the LDS of every predictor); default all.
        subset_seed: seed of :func:`~tda.datamodels.sample_subsets`, which draws the ``count``
            subsets (``seeds`` are the retrained models' training seeds); another seed draws
            other subsets, which need their own ``root``.
        ridge_grid: candidate ridges, chosen on held-out fit subsets by :func:`select_ridge`.
        scale, forget_scale: factors on the effect on retain and forget points (ridge shrinks
            it; see :class:`~unlearn.predictors.ShiftPredictor`).

    Raises:
        ValueError: ``root`` holds a store of other subsets, seeds, training set, architecture or
            training settings.
    """
    train_set = training_set(data)
    masks = sample_subsets(len(train_set), alpha, count, seed=subset_seed)
    shape = architecture(build_model(model_factory, 0))
    store = GroundTruthStore.create_or_open(
        root,
        masks,
        seeds,
        train_set.fingerprint(),  # the queries are the training points
        _store_recipe(shape, config),
        train_fingerprint=train_set.fingerprint(),
    )
    store.run(TrainingLogits(model_factory, train_set, config), progress=progress)
    used = slice(0, fit_subsets)
    outputs = subset_logits(store, train_set, output)[used]
    ridge = select_ridge(store.masks[used], outputs, ridge_grid)
    scope = PredictorScope(len(train_set), train_set.fingerprint(), shape)
    return DatamodelPredictor(
        scope=scope,
        output=output,
        scale=scale,
        forget_scale=forget_scale,
        masks=store.masks[used],
        outputs=outputs,
        ridge=ridge,
    )
