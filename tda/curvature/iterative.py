r"""Iterative inverse-HVP solvers, conjugate gradient and LiSSA: matrix-free curvature products.

Both apply :math:`A = C + \lambda I` (``C`` the Hessian or Gauss-Newton matrix of the mean training
loss, see :mod:`tda.curvature.hvp`) only through products, so memory stays at a few ``[q, p]``
blocks. Both hold references to the model and data from ``fit``: the model must not change
before ``solve``. Failures are raised, never returned as NaN: :class:`SolverDivergedError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tda.curvature.base import (
    Curvature,
    NotPositiveDefiniteError,
    SolverDivergedError,
    check_curvature,
    check_damping,
    check_finite,
    check_vectors,
)
from tda.curvature.hvp import DampedCurvature
from tda.data.examples import Examples
from tda.grads import NonFiniteGradientError
from tda.task import Task

_GROWTH_SLACK = 10.0  # LiSSA iterates may exceed their convergent-regime bound by this factor
LISSA_TRUNCATION_TOLERANCE = 0.01
"""Largest acceptable :func:`lissa_truncation`; :class:`LiSSASolver` warns above it."""


class SolverConvergenceWarning(UserWarning):
    """An iterative solver stopped at its iteration limit before reaching its tolerance."""


@dataclass(frozen=True)
class ConjugateGradientResult:
    """Solutions ``[q, p]``, final relative residuals ``[q]`` and the iterations run."""

    solution: Tensor
    relative_residual: Tensor
    iterations: int


def _check_finite_product(product: Tensor, method: str) -> None:
    """Refuse a non-finite curvature product, which the positivity and growth checks would blame
    on the damping or the scale."""
    if not bool(torch.isfinite(product).all()):
        raise NonFiniteGradientError(
            f"{method} got a non-finite curvature product; check the model's outputs, the inputs "
            "and the targets (one outside the model's classes gives NaN)"
        )


def conjugate_gradient(
    operator: Callable[[Tensor], Tensor], rhs: Tensor, *, tol: float, max_iter: int
) -> ConjugateGradientResult:
    r"""Solve :math:`A x_j = b_j` for each row of ``rhs`` ``[q, p]`` by conjugate gradients.

    The rows run in lockstep, each with its own step sizes; a row stops once
    :math:`\lVert r_j\rVert \le \text{tol}\,\lVert b_j\rVert` and later products skip it.
    ``operator`` maps ``[k, p] -> [k, p]`` and must be symmetric positive definite.

    Raises:
        ValueError: a row of ``rhs`` holds NaN or infinity (it would stop at once, solved as 0).
        NonFiniteGradientError: a product of ``operator`` holds NaN or infinity (e.g. a training
            target outside the model's classes).
        NotPositiveDefiniteError: a search direction has :math:`d^\top A d \le 0`.
        SolverDivergedError: a residual became non-finite.
    """
    check_finite(rhs, "conjugate_gradient")
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = rhs.clone()
    squared = (residual * residual).sum(1)
    threshold = (tol**2) * squared
    active = squared > threshold
    iterations = 0
    while bool(active.any()) and iterations < max_iter:
        rows = active.nonzero().squeeze(1)
        d = direction[rows]
        product = operator(d)
        _check_finite_product(product, "conjugate gradient")
        curvature = (d * product).sum(1)
        if not bool((curvature > 0).all()):
            raise NotPositiveDefiniteError(
                "conjugate gradient met a direction of non-positive curvature: the curvature "
                "plus damping is not positive definite; use curvature='gauss_newton' or raise "
                "the damping"
            )
        step = squared[rows] / curvature
        solution[rows] += step.unsqueeze(1) * d
        residual[rows] -= step.unsqueeze(1) * product
        new_squared = (residual[rows] ** 2).sum(1)
        if not bool(torch.isfinite(new_squared).all()):
            raise SolverDivergedError(
                "conjugate gradient produced a non-finite residual; raise the damping"
            )
        direction[rows] = residual[rows] + (new_squared / squared[rows]).unsqueeze(1) * d
        squared[rows] = new_squared
        active[rows] = new_squared > threshold[rows]
        iterations += 1
    norms = rhs.norm(dim=1).clamp_min(torch.finfo(rhs.dtype).tiny)
    return ConjugateGradientResult(solution, squared.sqrt() / norms, iterations)


@dataclass
class ConjugateGradientSolver:
    r"""Matrix-free :math:`(C + \lambda I)^{-1}v` by conjugate gradients, batched over rows.

    Args:
        curvature: ``"gauss_newton"`` (default, positive semi-definite) or ``"hessian"``
            (indefinite on non-convex models: non-positive curvature raises).
        damping: :math:`\lambda`, absolute.
        tol: relative residual :math:`\lVert Ax - b\rVert / \lVert b\rVert` to reach.
        max_iter: iteration limit (each iteration is one pass of curvature products over the
            training set).
        strict: when the limit is hit before ``tol``, raise :class:`SolverDivergedError` (default:
            an unconverged solve silently changes the scores) or, if False, warn with
            :class:`SolverConvergenceWarning` and return the last iterate.
        chunk_size: examples per vectorised curvature product.
    """

    curvature: Curvature = "gauss_newton"
    damping: float = 0.01
    tol: float = 1e-6
    max_iter: int = 200
    strict: bool = True
    chunk_size: int = 256
    _operator: DampedCurvature | None = field(default=None, init=False, repr=False)
    _size: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_curvature(self.curvature)
        check_damping(self.damping)
        if not self.tol > 0 or self.max_iter < 1:
            raise ValueError(f"need tol > 0 and max_iter >= 1, got {self.tol}, {self.max_iter}")

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train: Examples,
        *,
        parameters: Sequence[str] | None = None,
    ) -> ConjugateGradientSolver:
        """Keep the problem (references, no copies); the products run in ``solve``."""
        self._operator = DampedCurvature(
            model, task, train, parameters, self.curvature, self.damping, self.chunk_size
        )
        self._size = self._operator.size
        return self

    def solve(self, vectors: Tensor) -> Tensor:
        r"""``[q, p]``: :math:`(C + \lambda I)^{-1} v` per row."""
        check_vectors(vectors, self._size, type(self).__name__)
        result = conjugate_gradient(self._operator, vectors, tol=self.tol, max_iter=self.max_iter)
        worst = float(result.relative_residual.max()) if len(vectors) else 0.0
        if worst > self.tol:
            message = (
                f"conjugate gradient reached relative residual {worst:.2e} > tol={self.tol:g} "
                f"after max_iter={self.max_iter} iterations; raise max_iter, raise the damping "
                f"(now {self.damping:g}) to improve conditioning, or loosen tol"
            )
            if self.strict:
                raise SolverDivergedError(message + " (or pass strict=False to accept it)")
            warnings.warn(message, SolverConvergenceWarning, stacklevel=2)
        return result.solution

    def config(self) -> dict:
        """Solver name and hyperparameters."""
        return {
            "solver": "conjugate_gradient",
            "curvature": self.curvature,
            "damping": self.damping,
            "tol": self.tol,
            "max_iter": self.max_iter,
        }


def lissa(
    operator: Callable[[Tensor, int], Tensor], rhs: Tensor, *, scale: float, depth: int
) -> Tensor:
    r"""LiSSA (Agarwal et al. 2017): :math:`v_{t+1} = b + (I - A_t/s)v_t` from :math:`v_0 = b`,
    returning :math:`v_T/s` for :math:`T` = ``depth``.

    ``operator(v, t)`` applies :math:`A_t`, an estimate of :math:`A` (e.g. on a minibatch). With
    :math:`A_t = A` the iterate is the truncated Neumann series of :math:`T + 1` terms,
    :math:`v_T/s = \sum_{k \le T}(I - A/s)^k b/s \to A^{-1}b`, which converges iff every
    eigenvalue of :math:`A` lies in :math:`(0, 2s)`; then
    :math:`\lVert v_t\rVert \le (t+1)\lVert b\rVert`.

    Raises:
        NonFiniteGradientError: a product of ``operator`` holds NaN or infinity (e.g. a training
            target outside the model's classes).
        SolverDivergedError: an iterate is non-finite or exceeds that bound by a wide margin.
    """
    bound = rhs.norm(dim=1)
    iterate = rhs.clone()
    previous = bound
    for step in range(depth):
        product = operator(iterate, step)
        _check_finite_product(product, "LiSSA")
        iterate = rhs + iterate - product / scale
        norms = iterate.norm(dim=1)
        if not bool(torch.isfinite(norms).all()) or bool(
            (norms > _GROWTH_SLACK * (step + 2) * bound).any()
        ):
            raise SolverDivergedError(_divergence_message(norms, previous, step, scale))
        previous = norms
    return iterate / scale


def lissa_truncation(damping: float, scale: float, depth: int) -> float:
    r"""The worst-case relative error :math:`|1 - \lambda/s|^{T+1}` left by :func:`lissa`.

    :func:`lissa` sums :math:`T + 1` terms of the Neumann series, so along an eigenvector of
    :math:`A = C + \lambda I` with eigenvalue :math:`a` its estimate misses the fraction
    :math:`(1 - a/s)^{T+1}` of :math:`a^{-1}b`. With ``scale`` above the largest eigenvalue (the
    advised setting) the slowest mode is the smallest :math:`a \ge \lambda`, which is
    :math:`\lambda` itself when :math:`C` is singular (over-parameterised models): the bound.
    """
    return abs(1.0 - damping / scale) ** (depth + 1)


def lissa_required_depth(
    damping: float, scale: float, tolerance: float = LISSA_TRUNCATION_TOLERANCE
) -> int | None:
    """The smallest ``depth`` with :func:`lissa_truncation` at most ``tolerance``.

    ``None`` when no depth reaches it: ``damping`` 0 (zero-curvature directions never converge) or
    ``damping >= 2 * scale`` (the series diverges).
    """
    contraction = abs(1.0 - damping / scale)
    if contraction >= 1.0:
        return None
    if contraction == 0.0:
        return 0
    depth = max(math.ceil(math.log(tolerance) / math.log(contraction)) - 1, 0)
    while lissa_truncation(damping, scale, depth) > tolerance:  # guard the rounding of the logs
        depth += 1
    return depth


def _truncation_message(damping: float, scale: float, depth: int) -> str:
    needed = lissa_required_depth(damping, scale)
    remedy = (
        f"use depth >= {needed}"
        if needed is not None
        else "no depth is enough: use damping > 0 (and below 2 * scale)"
    )
    return (
        f"LiSSA with depth={depth}, scale={scale:g} and damping={damping:g} leaves up to "
        f"{lissa_truncation(damping, scale, depth):.3g} of the solution along low-curvature "
        f"directions (|1 - damping/scale|^(depth+1) > {LISSA_TRUNCATION_TOLERANCE:g}); {remedy}, "
        "or lower scale (keeping it above half the largest eigenvalue) or raise damping"
    )


def _divergence_message(norms: Tensor, previous: Tensor, step: int, scale: float) -> str:
    growth = float((norms / previous.clamp_min(torch.finfo(norms.dtype).tiny)).max())
    estimate = ""
    if math.isfinite(growth) and growth > 1:
        # Divergence is dominated by the top eigenvalue mu: |1 - mu/s| = growth.
        estimate = f" (largest eigenvalue roughly {scale * (1 + growth):.3g})"
    return (
        f"LiSSA diverged at step {step + 1}: the iterates grew by about {growth:.3g}x per step, "
        "so the curvature plus damping has an eigenvalue above 2*scale"
        f"{estimate}; increase `scale` (now {scale:g}) to at least that eigenvalue"
    )


@dataclass
class LiSSASolver:
    r"""Stochastic :math:`(C + \lambda I)^{-1}v` by the LiSSA recursion on sampled minibatches.

    Step ``t`` uses the curvature of ``batch_size`` training examples drawn with replacement
    (the whole training set every step when ``batch_size >= n``, which makes it deterministic);
    ``repeats`` independent recursions are averaged. The sample sequence restarts from ``seed``
    at each ``solve``, so results are reproducible and do not depend on how rows are grouped.

    Args:
        curvature: ``"gauss_newton"`` (default) or ``"hessian"``.
        damping: :math:`\lambda`, absolute.
        scale: :math:`s`; must exceed half the largest eigenvalue of :math:`C + \lambda I`
            (safer: exceed it). Too small diverges (raised, naming ``scale``); too large needs a
            larger ``depth``: error shrinks like :math:`(1 - \lambda/s)^{\text{depth}+1}`.
        depth: recursion steps :math:`T`. A :class:`SolverConvergenceWarning` names the depth
            needed when :func:`lissa_truncation` exceeds ``LISSA_TRUNCATION_TOLERANCE`` (1%).
        batch_size: examples per curvature estimate.
        repeats: independent recursions averaged.
        seed: seed of the minibatch sampling.
        chunk_size: examples per vectorised curvature product.
    """

    curvature: Curvature = "gauss_newton"
    damping: float = 0.01
    scale: float = 10.0
    depth: int = 1000
    batch_size: int = 64
    repeats: int = 1
    seed: int = 0
    chunk_size: int = 256
    _operator: DampedCurvature | None = field(default=None, init=False, repr=False)
    _size: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_curvature(self.curvature)
        check_damping(self.damping)
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if min(self.depth, self.batch_size, self.repeats) < 1:
            raise ValueError("depth, batch_size and repeats must be at least 1")
        if lissa_truncation(self.damping, self.scale, self.depth) > LISSA_TRUNCATION_TOLERANCE:
            message = _truncation_message(self.damping, self.scale, self.depth)
            warnings.warn(message, SolverConvergenceWarning, stacklevel=3)

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train: Examples,
        *,
        parameters: Sequence[str] | None = None,
    ) -> LiSSASolver:
        """Keep the problem (references, no copies); the recursion runs in ``solve``."""
        self._operator = DampedCurvature(
            model, task, train, parameters, self.curvature, self.damping, self.chunk_size
        )
        self._size = self._operator.size
        return self

    def solve(self, vectors: Tensor) -> Tensor:
        r"""``[q, p]``: the LiSSA estimate of :math:`(C + \lambda I)^{-1} v` per row.

        Raises:
            SolverDivergedError: the recursion diverged (``scale`` too small).
        """
        check_vectors(vectors, self._size, type(self).__name__)
        generator = torch.Generator().manual_seed(self.seed)
        total = torch.zeros_like(vectors)
        for _ in range(self.repeats):
            total += lissa(
                self._sampled_operator(generator), vectors, scale=self.scale, depth=self.depth
            )
        return total / self.repeats

    def _sampled_operator(self, generator: torch.Generator) -> Callable[[Tensor, int], Tensor]:
        train = self._operator.train
        if self.batch_size >= len(train):
            return lambda vectors, step: self._operator(vectors)

        def apply(vectors: Tensor, step: int) -> Tensor:
            index = torch.randint(len(train), (self.batch_size,), generator=generator)
            index = index.to(train.inputs.device)
            return self._operator(vectors, Examples(train.inputs[index], train.targets[index]))

        return apply

    def config(self) -> dict:
        """Solver name and hyperparameters."""
        return {
            "solver": "lissa",
            "curvature": self.curvature,
            "damping": self.damping,
            "scale": self.scale,
            "depth": self.depth,
            "batch_size": self.batch_size,
            "repeats": self.repeats,
            "seed": self.seed,
        }
