r"""The curvature-solver protocol shared by every inverse-HVP method, and its errors.

A solver is fitted to the mean training loss :math:`L(\theta) = \frac1n\sum_i \ell(z_i;\theta)` at
a model's current parameters and then applies :math:`(H + \lambda I)^{-1}` to vectors, where
:math:`H` is a curvature of :math:`L` (its Hessian, Gauss-Newton matrix, a Kronecker or diagonal
approximation) and :math:`\lambda` the solver's ``damping``. Vectors are flattened in the
:mod:`tda.grads` parameter order (model order, restricted to the chosen parameters), so the
gradients of :func:`tda.grads.per_sample_gradients` can be passed straight in.

An L2 penalty :math:`\frac{\lambda}{2}\lVert\theta\rVert^2` on all attributed parameters adds
exactly :math:`\lambda I` to the Hessian: set ``damping`` to the weight-decay coefficient to get
the Hessian of the regularised objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.task import Task

Curvature = Literal["hessian", "gauss_newton"]
"""``"hessian"``: exact Hessian of the mean loss (indefinite for non-convex models).
``"gauss_newton"``: :math:`\\frac1n\\sum_i J_i^\\top H_{\\text{out},i} J_i`, positive semi-definite
for convex losses of the logits; equal to the Hessian for linear models."""


class CurvatureSolver(Protocol):
    """Fit a curvature of the mean training loss, then apply its damped inverse to vectors."""

    damping: float

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train: Examples,
        *,
        parameters: Sequence[str] | None = None,
    ) -> CurvatureSolver:
        """Fit to the curvature of the mean ``task.loss`` over ``train`` at the model's parameters.

        Returns the fitted solver (``self`` or a copy).
        """
        ...

    def solve(self, vectors: Tensor) -> Tensor:
        r"""``[q, p] -> [q, p]``: :math:`(H + \lambda I)^{-1} v` for each row :math:`v`."""
        ...

    def config(self) -> dict:
        """Hyperparameters that identify the solver (JSON-serialisable)."""
        ...


class SolverDivergedError(RuntimeError):
    """A solver could not produce a finite, accurate inverse; the message says what to change."""


class NotPositiveDefiniteError(SolverDivergedError):
    r""":math:`H + \lambda I` is not positive definite (indefinite Hessian, too little damping)."""


def check_damping(damping: float) -> None:
    """Raise ``ValueError`` for negative or non-finite damping."""
    if not damping >= 0 or damping == float("inf"):
        raise ValueError(f"damping must be a finite non-negative number, got {damping}")


def check_curvature(curvature: str, allowed: Sequence[str] = ("hessian", "gauss_newton")) -> None:
    """Raise ``ValueError`` for an unknown curvature name."""
    if curvature not in allowed:
        raise ValueError(f"curvature must be one of {list(allowed)}, got {curvature!r}")


def check_vectors(vectors: Tensor, size: int | None, solver: str) -> None:
    """Raise for an unfitted solver (``size`` None), vectors that are not ``[q, size]``, or
    vectors holding NaN or infinity (a solver would return them as NaN, or as zeros)."""
    if size is None:
        raise RuntimeError(f"call {solver}.fit(model, task, train) before solve()")
    if vectors.ndim != 2 or vectors.shape[1] != size:
        raise ValueError(
            f"{solver}.solve expects vectors of shape [q, {size}] (the fitted parameters), "
            f"got {list(vectors.shape)}"
        )
    check_finite(vectors, f"{solver}.solve")


def check_finite(vectors: Tensor, what: str) -> None:
    """Raise ``ValueError`` naming the first row of ``vectors`` ``[q, p]`` with NaN or infinity."""
    finite = torch.isfinite(vectors).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{what} got a non-finite vector: row {row} holds NaN or infinity")
