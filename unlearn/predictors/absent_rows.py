r"""Refitting only the final-layer rows of the classes a request removes entirely.

With every other row held, the retain loss of the head-refit objective
(:mod:`unlearn.predictors.head`) depends on the rows :math:`\theta_c` of the absent classes
:math:`A` only through

.. math::

    \frac1n \sum_{i \in R} \log\Big(1 + \sum_{c \in A} e^{x_i\cdot\theta_c - a_i}\Big)
    + \frac\lambda2 \lVert\theta - \theta_o\rVert^2,

:math:`x_i` the features (with a 1 appended when the layer has a bias) and :math:`a_i` the
log-sum-exp of the held classes' logits: no retain point belongs to :math:`A`, so its label's
logit cancels. That convex problem in :math:`|A|(d + 1)` variables is small enough for Newton's
method. Far from the optimum the loss is nearly exponential along a Newton step, which then moves
each logit by only about one, so the line search also lengthens the step while the objective keeps
falling.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from unlearn.methods.base import ForgetSplit


def absent_classes(split: ForgetSplit, classes: int) -> list[int]:
    """The classes below ``classes`` with examples in :math:`F` and none left in :math:`R`."""
    forgotten = set(split.forget.targets.tolist()) - set(split.retain.targets.tolist())
    return sorted(c for c in forgotten if 0 <= c < classes)


def refit_rows(
    features: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    rows: list[int],
    penalty: float,
    max_iterations: int,
) -> tuple[Tensor, Tensor | None]:
    r"""The layer ``(weight, bias)`` with ``rows`` replaced by the minimiser of the module
    docstring's objective (anchored at and started from the given rows), the others unchanged.

    Args:
        features: :math:`\phi(x_i)` of the retain set ``[n, d]``, float64 like the layer.
        weight: ``[C, d]``; ``bias``: ``[C]`` or ``None`` (a layer without one).
        rows: the absent classes :math:`A` (non-empty).
        penalty: :math:`\lambda`.
        max_iterations: Newton iterations at most; it stops earlier once the Newton decrement
            is below 1e-16 of the objective or a step no longer lowers it.
    """
    inputs = (
        features if bias is None else torch.cat([features, torch.ones_like(features[:, :1])], 1)
    )
    stacked = weight if bias is None else torch.cat([weight, bias[:, None]], 1)
    held = torch.ones(len(weight), dtype=torch.bool, device=weight.device)
    held[rows] = False
    offset = torch.logsumexp(inputs @ stacked[held].T, dim=1)
    solution = _newton(_RowObjective(inputs, offset, stacked[rows], penalty), max_iterations)
    stacked = stacked.clone()
    stacked[rows] = solution
    if bias is None:
        return stacked, None
    return stacked[:, :-1], stacked[:, -1]


@dataclass(frozen=True)
class _RowObjective:
    """The module docstring's objective over the rows ``[k, p]``, given its parts."""

    inputs: Tensor  # [n, p]
    offset: Tensor  # [n]
    anchor: Tensor  # [k, p]
    penalty: float

    def value(self, logits: Tensor, rows: Tensor) -> Tensor:
        r"""The objective at ``rows``, whose shifted logits :math:`x_i\cdot\theta_c - a_i` are
        ``logits`` ``[n, k]``."""
        padded = torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)
        distance = (rows - self.anchor).square().sum()
        return torch.logsumexp(padded, 1).mean() + self.penalty / 2 * distance

    def newton_step(self, logits: Tensor, rows: Tensor) -> tuple[Tensor, float]:
        """Minus the inverse Hessian times the gradient ``[k, p]``, and the Newton decrement
        (the gradient times the inverse Hessian times the gradient)."""
        padded = torch.cat([torch.zeros_like(logits[:, :1]), logits], 1)
        probabilities = torch.softmax(padded, 1)[:, 1:]  # [n, k]
        count, (k, size) = len(logits), rows.shape
        gradient = probabilities.T @ self.inputs / count + self.penalty * (rows - self.anchor)
        curvature = (
            torch.diag_embed(probabilities) - probabilities[:, :, None] * probabilities[:, None, :]
        )
        weighted = (curvature[:, :, :, None] * self.inputs[:, None, None, :]).reshape(count, -1)
        hessian = (weighted.T @ self.inputs / count).reshape(k, k, size, size)
        hessian = hessian.permute(0, 2, 1, 3).reshape(k * size, k * size)
        hessian = hessian + self.penalty * torch.eye(k * size, dtype=rows.dtype, device=rows.device)
        step = -torch.linalg.solve(hessian, gradient.reshape(-1))
        return step.reshape(k, size), -float(gradient.reshape(-1) @ step)


def _newton(objective: _RowObjective, max_iterations: int) -> Tensor:
    """Newton's method from the anchor, each step scaled by :func:`_step_length`."""
    rows = objective.anchor.clone()
    logits = objective.inputs @ rows.T - objective.offset[:, None]
    for _ in range(max_iterations):
        step, decrement = objective.newton_step(logits, rows)
        start = float(objective.value(logits, rows))
        if decrement <= 1e-16 * start:
            break
        change = objective.inputs @ step.T
        length = _step_length(objective, logits, rows, step, change, start)
        if length is None:  # no decrease left to find in float64
            break
        rows, logits = rows + length * step, logits + length * change
    return rows


def _step_length(objective, logits, rows, step, change, start: float) -> float | None:
    """A length along ``step``, doubled while the objective keeps falling or else halved until
    it falls below ``start``, its value at length 0 (``None`` if no length down to 1/1024 lowers
    it)."""

    @functools.cache
    def value(length: float) -> float:
        return float(objective.value(logits + length * change, rows + length * step))

    length = 1.0
    if value(1.0) < start:
        while length < 2.0**30 and value(2 * length) < value(length):
            length *= 2
        return length
    while length > 2.0**-10:
        length /= 2
        if value(length) < start:
            return length
    return None
