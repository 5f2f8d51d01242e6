r"""Predictor from a precomputed score matrix of training points (any attributor's scores)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tda.fingerprint import array_fingerprint
from tda.scores import read_scores
from unlearn.predictors.base import PredictorScope, ShiftPredictor, training_set


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
    _fingerprint: tuple[tuple, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scores is None:
            raise ValueError("ScoresPredictor needs a score matrix (scores=...)")
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
        return {"scores": list(self.scores.shape), "scores_fingerprint": self.scores_fingerprint()}

    def scores_fingerprint(self) -> str:
        """SHA-256 of the score matrix (:func:`~tda.fingerprint.array_fingerprint`): in the audit
        record, and in the key of the cached effect, so scores replaced or edited in place (through
        torch) are never served another matrix's effect. Hashed again only when they change."""
        token = (id(self.scores), getattr(self.scores, "_version", None))
        if self._fingerprint is None or self._fingerprint[0] != token:
            self._fingerprint = (token, array_fingerprint(self.scores))
        return self._fingerprint[1]

    def effect(self, forget_indices: np.ndarray) -> Tensor:
        columns = self.scores[..., torch.as_tensor(forget_indices)]
        # a column not finite for any query: that training example was never scored
        unscored = (~torch.isfinite(columns)).all(dim=-2)  # [|F|] or [C, |F|]
        unscored = unscored.any(dim=0) if unscored.dim() == 2 else unscored
        if bool(unscored.any()):
            point = int(forget_indices[int(unscored.nonzero()[0])])
            raise ValueError(
                f"forget point {point} has no scores: its column of the score matrix is not finite"
            )
        summed = columns.sum(-1)
        return summed if self.output == "margin" else summed.T


def load_scores_predictor(
    path: str | os.PathLike,
    data: Any,
    *,
    scale: float = 1.0,
    forget_scale: float | None = None,
) -> ScoresPredictor:
    """A margin :class:`ScoresPredictor` from ``experiments/score.py``'s files: ``path`` (``.npy``,
    ``[n_train, n_train]``) and its record (``.json``), made with ``query_split=train``.

    The record names the training set the scores were made on and the architecture of the
    models; the predictor refuses others (:class:`~unlearn.predictors.PredictorScope`).

    Raises:
        FileNotFoundError: the scores or their record are missing.
        ValueError: scores made on another training set, or with other queries than its points.
    """
    try:
        scores, record = read_scores(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} (run experiments/score.py first)") from error
    train = training_set(data)
    fingerprint = train.fingerprint()
    if record["train_fingerprint"] != fingerprint:
        raise ValueError(f"{path} scores another training set than the one given")
    if record["query_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} does not score the training points as queries "
            "(make it with experiments/score.py query_split=train)"
        )
    scope = PredictorScope(len(train), fingerprint, record.get("architecture"))
    scores = torch.from_numpy(scores)
    return ScoresPredictor(
        scope=scope, output="margin", scale=scale, forget_scale=forget_scale, scores=scores
    )
