r"""The explicit curvature matrix and its exact damped inverse: small models and test reference.

:func:`explicit_curvature` builds the ``[p, p]`` Hessian or Gauss-Newton matrix of the mean training
loss from ``p`` curvature-vector products against the identity (in blocks). :class:`ExplicitSolver`
factors :math:`H + \lambda I` once by Cholesky and then solves any number of right-hand sides
exactly. With ``curvature="hessian"`` on a non-convex model :math:`H` may be indefinite; if
:math:`H + \lambda I` is not positive definite the solver refuses (the influence-function
derivation assumes a minimum) and names its smallest eigenvalue so damping can be raised past it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tda.curvature.base import (
    Curvature,
    NotPositiveDefiniteError,
    check_curvature,
    check_damping,
    check_vectors,
)
from tda.curvature.hvp import curvature_vector_product
from tda.data.examples import Examples, check_input_dtype
from tda.device import module_device
from tda.grads import NonFiniteGradientError, select_parameters
from tda.task import Task


def _check_size(size: int, max_parameters: int, dtype: torch.dtype) -> None:
    if size <= max_parameters:
        return
    element = torch.empty((), dtype=dtype).element_size()
    gibibytes = size * size * element / 2**30
    raise ValueError(
        f"an explicit curvature for p={size:,} parameters needs a {size:,} x {size:,} matrix "
        f"({gibibytes:.2f} GiB in {dtype}, more to factor it), beyond max_parameters="
        f"{max_parameters:,}; use ConjugateGradientSolver, LiSSASolver or a K-FAC solver, "
        "restrict `parameters` to a few layers, or raise max_parameters"
    )


def _check_finite_rows(rows: Tensor, first: int, curvature: str) -> None:
    """Refuse curvature rows holding NaN or infinity, which the Cholesky factorisation or ``eigh``
    would report as an indefinite or ill-conditioned matrix."""
    finite = torch.isfinite(rows).all(dim=1)
    if not bool(finite.all()):
        row = first + int((~finite).nonzero()[0, 0])
        raise NonFiniteGradientError(
            f"the {curvature} curvature is not finite (row {row}); check the model's outputs, "
            "the inputs and the targets (one outside the model's classes gives NaN)"
        )


def explicit_curvature(
    model: nn.Module,
    task: Task,
    data: Examples,
    *,
    curvature: Curvature = "gauss_newton",
    parameters: Sequence[str] | None = None,
    chunk_size: int = 256,
    block_size: int = 64,
    max_parameters: int = 10_000,
) -> Tensor:
    r"""The ``[p, p]`` curvature of the mean loss over ``data``, symmetrised: :math:`(C+C^\top)/2`.

    Args:
        model, task, data, curvature, parameters, chunk_size: as in
            :func:`tda.curvature.hvp.curvature_vector_product`.
        block_size: identity columns multiplied per pass over the data.
        max_parameters: refuse larger ``p`` (the matrix takes ``p**2`` floats).

    Raises:
        ValueError: ``p`` exceeds ``max_parameters`` (the message gives the memory needed), or
            floating inputs of another dtype than the model.
        NonFiniteGradientError: the curvature holds NaN or infinity (e.g. a target outside the
            model's classes).
    """
    check_curvature(curvature)
    check_input_dtype(model, data.inputs)  # before the [p, p] matrix is allocated
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    selected = select_parameters(model, parameters)
    size = sum(p.numel() for p in selected.values())
    dtype = next(iter(selected.values())).dtype
    _check_size(size, max_parameters, dtype)
    device = module_device(model)
    matrix = torch.empty(size, size, dtype=dtype, device=device)
    for start in range(0, size, block_size):
        stop = min(start + block_size, size)
        basis = torch.zeros(stop - start, size, dtype=dtype, device=device)
        basis[:, start:stop].fill_diagonal_(1.0)  # rows start..stop-1 of the identity
        matrix[start:stop] = curvature_vector_product(
            model,
            task,
            data,
            basis,
            curvature=curvature,
            parameters=parameters,
            chunk_size=chunk_size,
        )
        _check_finite_rows(matrix[start:stop], start, curvature)
    return (matrix + matrix.T) / 2


@dataclass
class ExplicitSolver:
    r"""Exact :math:`(C + \lambda I)^{-1}` from the explicit matrix, factored once in float64.

    Args:
        curvature: ``"gauss_newton"`` (default; positive semi-definite) or ``"hessian"``.
        damping: :math:`\lambda`, absolute (added to every eigenvalue).
        chunk_size: examples per vectorised curvature product.
        max_parameters: refuse models with more parameters (memory ``p**2``).
    """

    curvature: Curvature = "gauss_newton"
    damping: float = 0.01
    chunk_size: int = 256
    max_parameters: int = 10_000
    _factor: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_curvature(self.curvature)
        check_damping(self.damping)

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train: Examples,
        *,
        parameters: Sequence[str] | None = None,
    ) -> ExplicitSolver:
        r"""Build :math:`C + \lambda I` and factor it by Cholesky.

        Raises:
            NotPositiveDefiniteError: the damped curvature has an eigenvalue :math:`\le 0`.
            NonFiniteGradientError: the curvature holds NaN or infinity (e.g. a target outside
                the model's classes).
        """
        matrix = explicit_curvature(
            model,
            task,
            train,
            curvature=self.curvature,
            parameters=parameters,
            chunk_size=self.chunk_size,
            max_parameters=self.max_parameters,
        ).double()
        matrix.diagonal().add_(self.damping)
        factor, info = torch.linalg.cholesky_ex(matrix)
        if int(info) != 0:
            smallest = float(torch.linalg.eigvalsh(matrix)[0]) - self.damping
            raise NotPositiveDefiniteError(
                f"the {self.curvature} curvature plus damping {self.damping} is not positive "
                f"definite (smallest curvature eigenvalue {smallest:.3g}); use "
                "curvature='gauss_newton' or damping larger than "
                f"{max(-smallest, 0.0):.3g}"
            )
        self._factor = factor
        return self

    def solve(self, vectors: Tensor) -> Tensor:
        r"""``[q, p]``: :math:`(C + \lambda I)^{-1} v` per row, in the dtype of ``vectors``."""
        size = None if self._factor is None else self._factor.shape[0]
        check_vectors(vectors, size, type(self).__name__)
        factor = self._factor.to(vectors.device)
        solution = torch.cholesky_solve(vectors.double().T, factor).T
        return solution.to(vectors.dtype)

    def config(self) -> dict:
        """Solver name and hyperparameters."""
        return {
            "solver": "explicit",
            "curvature": self.curvature,
            "damping": self.damping,
            "max_parameters": self.max_parameters,
        }
