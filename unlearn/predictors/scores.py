r"""Predictor from a precomputed score matrix of training points (any attributor's scores)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from unlearn.predictors.base import ShiftPredictor


@dataclass
class ScoresPredictor(ShiftPredictor):
    r"""Shift outputs by summed scores: ``effect(F)[q] = scores[q, F].sum()``.

    Attributes:
        scores: ``[n_train, n_train]`` margin scores (``output="margin"``) or
            ``[C, n_train, n_train]`` per-class-logit scores (``output="logits"``) whose rows are
            the training points as queries and columns the training examples, in the library's sign
            convention (positive: the example raises the output).
    """

    scores: Tensor | np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        scores = torch.as_tensor(self.scores)
        expected = 2 if self.output == "margin" else 3
        n = self.scope.train_size
        if scores.dim() != expected or tuple(scores.shape[-2:]) != (n, n):
            raise ValueError(
                f"{self.output} scores must have shape {'[C, ' if expected == 3 else '['}{n}, {n}] "
                f"for a training set of {n}, got {tuple(scores.shape)}"
            )
        self.scores = scores

    def settings(self) -> dict:
        return {"scores": list(self.scores.shape)}

    def effect(self, forget_indices: np.ndarray) -> Tensor:
        summed = self.scores[..., torch.as_tensor(forget_indices)].sum(-1)
        return summed if self.output == "margin" else summed.T
