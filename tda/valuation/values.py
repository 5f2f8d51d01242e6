r"""Per-example value and self-influence scores from any attributor.

* **Value** of training example :math:`i` on a set of queries: the mean of its scores,
  :math:`v_i = \frac1Q\sum_q \tau(x_q)_i`. With the library's sign convention a high value means
  the example pushes the queries' outputs up on average; a negative value, down (harmful).
* **Self-influence** :math:`\tau(z_i)_i`: how much an example supports its own prediction. The
  model has to memorise examples that the rest of the data contradicts (mislabelled, atypical),
  so they have high self-influence (Koh & Liang 2017, Sec. 5.4; Pruthi et al. 2020, Sec. 4).
  :func:`self_scores` reads the diagonal of any attributor's train-by-train scores;
  :func:`loss_gradient_norms` is the cheapest self-score, :math:`\lVert\nabla_\theta
  \ell(z_i)\rVert^2` (grad-dot / TracIn at one checkpoint with loss gradients on both sides);
  :func:`tracin_self_influence` sums it over training checkpoints,
  :math:`\sum_c \eta_c \lVert\nabla_\theta \ell(z_i;\theta_c)\rVert^2` (TracIn-CP
  self-influence, Pruthi et al. 2020, Sec. 4.1), which also sees the early checkpoints where a
  wrong label is not memorised yet.
* :func:`checkpoint_loss`, the mean training loss over the same checkpoints
  :math:`\frac1C\sum_c \ell(z_i;\theta_c)`, sees them with forward passes alone: an example the
  rest of the data contradicts is learnt late, so its loss stays high for longer (the trajectory
  form of the final-loss baseline; not an attribution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tda.checkpoints import Checkpoint, load_fresh_model
from tda.data.examples import Examples
from tda.grads import iter_per_sample_gradients
from tda.outputs import task_losses
from tda.task import ClassificationTask, Task

ScoreRows = Callable[[Sequence[int]], Tensor]


def values_from_scores(scores: Tensor | np.ndarray) -> Tensor:
    r"""Value :math:`v_i` ``[n_train]`` (float64): the mean over queries of ``scores [q, n]``.

    Raises:
        ValueError: not a non-empty 2-D matrix, or non-finite scores.
    """
    scores = torch.as_tensor(np.asarray(scores) if not isinstance(scores, Tensor) else scores)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be [n_query >= 1, n_train], got {tuple(scores.shape)}")
    return require_finite("scores", scores).to(torch.float64).mean(0)


def require_finite(name: str, array: Tensor | np.ndarray) -> Tensor:
    """``array`` as a tensor, refused if it holds NaN or infinity (``topk`` ranks NaN first, and
    strict JSON cannot hold it).

    Raises:
        ValueError: a non-finite entry; the message names ``name`` and the first one's index.
    """
    tensor = torch.as_tensor(array)
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        where = first[0] if len(first) == 1 else list(first)
        raise ValueError(
            f"{name} hold NaN or infinite values (first at index {where}: {float(tensor[first])})"
        )
    return tensor


def self_scores(score_rows: ScoreRows, n_train: int, chunk_size: int = 256) -> Tensor:
    r"""Self-influence :math:`\tau(z_i)_i` ``[n_train]`` from an attributor scoring training rows.

    Args:
        score_rows: returns the scores ``[len(rows), n_train]`` of the training examples at
            ``rows`` used as queries, e.g. ``lambda rows: trak.score("train", indices=rows)``
            after featurizing the training split, or
            ``lambda rows: influence.score(train.subset(rows))``.
        n_train: number of training examples.
        chunk_size: rows per call; memory is ``chunk_size * n_train`` scores.

    Raises:
        ValueError: a call returned the wrong shape.
    """
    if n_train < 1 or chunk_size < 1:
        raise ValueError(f"n_train ({n_train}) and chunk_size ({chunk_size}) must be >= 1")
    values = torch.empty(n_train, dtype=torch.float64)
    for start in range(0, n_train, chunk_size):
        rows = list(range(start, min(start + chunk_size, n_train)))
        block = torch.as_tensor(score_rows(rows))
        if tuple(block.shape) != (len(rows), n_train):
            raise ValueError(
                f"score_rows returned shape {tuple(block.shape)} for {len(rows)} rows; "
                f"expected ({len(rows)}, {n_train})"
            )
        values[start : start + len(rows)] = block[torch.arange(len(rows)), torch.tensor(rows)]
    return values


def loss_gradient_norms(
    model: nn.Module,
    train: Examples,
    *,
    task: Task = ClassificationTask(),
    parameters: Sequence[str] | None = None,
    chunk_size: int = 256,
) -> Tensor:
    r"""Squared loss-gradient norms :math:`\lVert\nabla_\theta\ell(z_i;\theta)\rVert^2` ``[n]``."""
    norms = [
        block.to(torch.float64).pow(2).sum(1).cpu()
        for block in iter_per_sample_gradients(
            model,
            task,
            train.inputs,
            train.targets,
            function="loss",
            parameters=parameters,
            chunk_size=chunk_size,
        )
    ]
    return torch.cat(norms)


def checkpoint_loss(
    model_factory: Callable[[], nn.Module],
    checkpoints: Sequence[Checkpoint],
    train: Examples,
    *,
    task: Task = ClassificationTask(),
    batch_size: int = 1024,
) -> Tensor:
    r"""Mean training loss over checkpoints ``[n]`` (float64): :math:`\frac1C\sum_c
    \ell(z_i;\theta_c)`, each checkpoint's model in eval mode.

    A suspicion score (high: learnt late, possibly mislabelled) for
    :func:`~tda.valuation.mislabel_detection` or ``valuation_report(self_influence=...)``.

    Raises:
        ValueError: no checkpoints, or a NaN or infinite loss (e.g. a target outside the
            model's classes).
    """
    if not checkpoints:
        raise ValueError("checkpoint_loss needs at least one checkpoint; got none")
    total = torch.zeros(len(train), dtype=torch.float64)
    for checkpoint in checkpoints:
        model = load_fresh_model(model_factory, checkpoint)
        total += task_losses(model, task, train, batch_size).to(torch.float64).cpu()
    return require_finite("checkpoint losses", total / len(checkpoints))


def tracin_self_influence(
    model_factory: Callable[[], nn.Module],
    checkpoints: Sequence[Checkpoint],
    train: Examples,
    *,
    task: Task = ClassificationTask(),
    parameters: Sequence[str] | None = None,
    chunk_size: int = 256,
) -> Tensor:
    r"""TracIn-CP self-influence ``[n]``, summed over training checkpoints :math:`\theta_c`.

    :math:`\sum_c \eta_c \lVert\nabla_\theta\ell(z_i;\theta_c)\rVert^2`, where :math:`\eta_c` is
    each checkpoint's ``segment_learning_rate`` (as in :class:`tda.TracIn`).

    Raises:
        ValueError: no checkpoints.
    """
    if not checkpoints:
        raise ValueError("TracIn self-influence needs at least one checkpoint; got none")
    total = torch.zeros(len(train), dtype=torch.float64)
    for checkpoint in checkpoints:
        model = load_fresh_model(model_factory, checkpoint)
        norms = loss_gradient_norms(
            model, train, task=task, parameters=parameters, chunk_size=chunk_size
        )
        total += checkpoint.segment_learning_rate * norms
    return total
