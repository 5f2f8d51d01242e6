r"""L-BFGS for small, strongly convex problems, with the direction in compact form.

:class:`torch.optim.LBFGS` applies its inverse-Hessian estimate by the two-loop recursion: with
a history of :math:`m` pairs, :math:`4m` vector operations per iteration, which on a head refit
(:math:`p \approx 10^3` variables) cost as much as the objective itself. The compact form
(Byrd, Nocedal and Schnabel 1994) gives the same direction from a few matrix products,

.. math::

    H g = \gamma g + S a - \gamma Y t,\qquad R\,t = S^\top g,\qquad
    R^\top a = (D + \gamma Y^\top Y)\,t - \gamma Y^\top g,

with :math:`S, Y` the last :math:`m` steps and gradient changes, :math:`R` the upper triangle of
:math:`S^\top Y`, :math:`D` its diagonal and :math:`\gamma = s^\top y / y^\top y` of the newest
pair; :math:`S^\top Y` and :math:`Y^\top Y` are kept up to date one row and column per pair. The
step is found by backtracking from 1 (Armijo): on a strongly convex objective every pair has
:math:`s^\top y > 0`, so no curvature condition is needed (a pair without it, as on a linear
stretch of a merely convex objective, is left out of the history).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], tuple[Tensor, Tensor]]  # x -> (value, gradient)
ARMIJO = 1e-4


class History:
    """The last ``size`` pairs :math:`(s, y)` as rows, with :math:`S^\\top Y` and
    :math:`Y^\\top Y` kept up to date."""

    def __init__(self, size: int, like: Tensor) -> None:
        self.steps = like.new_zeros(size, len(like))
        self.changes = like.new_zeros(size, len(like))
        self.step_change = like.new_zeros(size, size)  # [i, j] = s_i . y_j for i <= j
        self.change_change = like.new_zeros(size, size)  # [i, j] = y_i . y_j
        self.count = 0

    def add(self, step: Tensor, change: Tensor) -> None:
        """Append a pair, dropping the oldest when full."""
        if self.count == len(self.steps):
            for matrix in (self.steps, self.changes):
                matrix[:-1] = matrix[1:].clone()
            for matrix in (self.step_change, self.change_change):
                matrix[:-1, :-1] = matrix[1:, 1:].clone()
            self.count -= 1
        k = self.count
        self.steps[k], self.changes[k] = step, change
        self.step_change[: k + 1, k] = self.steps[: k + 1] @ change  # the upper triangle only
        self.change_change[: k + 1, k] = self.changes[: k + 1] @ change
        self.change_change[k, :k] = self.change_change[:k, k]
        self.count = k + 1

    def apply(self, gradient: Tensor) -> Tensor:
        """:math:`H g`, the inverse-Hessian estimate applied to ``gradient`` (``g`` itself while
        the history is empty)."""
        k = self.count
        if k == 0:
            return gradient.clone()
        steps, changes = self.steps[:k], self.changes[:k]
        step_change = self.step_change[:k, :k]
        gamma = step_change[-1, -1] / self.change_change[k - 1, k - 1]
        upper = torch.triu(step_change)
        t = torch.linalg.solve_triangular(upper, (steps @ gradient)[:, None], upper=True)
        inner = torch.diag(step_change)[:, None] * t + gamma * (self.change_change[:k, :k] @ t)
        inner = inner - gamma * (changes @ gradient)[:, None]
        a = torch.linalg.solve_triangular(upper.T, inner, upper=False)
        return gamma * gradient + (a[:, 0] @ steps) - gamma * (t[:, 0] @ changes)


def minimize(
    objective: Objective,
    start: Tensor,
    max_iterations: int,
    *,
    history: int = 100,
    tolerance: float = 1e-10,
) -> Tensor:
    """Minimise a smooth, strongly convex ``objective`` from ``start`` (a flat tensor).

    Stops after ``max_iterations`` iterations, once the gradient's largest entry is at most
    ``tolerance``, or when no step along the direction lowers the value (converged to the
    precision of the arithmetic).
    """
    x = start.clone()
    value, gradient = objective(x)
    pairs = History(history, x)
    for iteration in range(max_iterations):
        if float(gradient.abs().max()) <= tolerance:
            break
        direction = -pairs.apply(gradient)
        first = min(1.0, 1.0 / float(gradient.abs().sum())) if iteration == 0 else 1.0
        moved = _backtrack(objective, x, value, gradient, direction, first)
        if moved is None:
            break
        step, (new_value, new_gradient) = moved
        change = new_gradient - gradient
        if float(step @ change) > 1e-10 * float(step.norm() * change.norm()):
            pairs.add(step, change)  # else no curvature along the step (a flat stretch): skip
        x, value, gradient = x + step, new_value, new_gradient
    return x


def _backtrack(objective: Objective, x, value, gradient, direction, length: float):
    """The first step ``length * direction`` halved until it lowers the value enough (Armijo),
    with the objective there; ``None`` when none does before the step vanishes."""
    slope = float(gradient @ direction)
    if not slope < 0:
        return None
    while length * float(direction.abs().max()) > 1e-16 * (1 + float(x.abs().max())):
        step = length * direction
        evaluated = objective(x + step)
        lowered = float(evaluated[0]) <= float(value) + ARMIJO * length * slope
        if lowered or float(evaluated[1] @ step) <= ARMIJO * length * slope:
            return step, evaluated
        length /= 2
    return None
