r"""Cheap preconditioners: the diagonal of the Gauss-Newton matrix or empirical Fisher, and none.

* ``gauss_newton`` diagonal: :math:`\operatorname{diag}(G) = \frac1n\sum_i \sum_{c,d}
  (H_{\text{out},i})_{cd}\, J_{i,c} \odot J_{i,d}` from per-example logit Jacobians
  :math:`J_i` (``[C, p]``) and logit Hessians of the loss, exact for any task.
* ``empirical_fisher`` diagonal: :math:`\frac1n\sum_i g_i \odot g_i` from the per-sample loss
  gradients :math:`g_i` of :func:`tda.grads.per_sample_gradients`.
* :class:`IdentitySolver`: no curvature (:math:`C = 0`), so :math:`(C+\lambda I)^{-1}v = v/\lambda`;
  influence then reduces to a scaled gradient dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev, vmap

from tda.curvature.base import check_curvature, check_damping, check_vectors
from tda.curvature.hvp import flatten
from tda.data.examples import Examples, check_input_dtype
from tda.device import to_device_of
from tda.grads import (
    NonFiniteGradientError,
    evaluation_mode,
    frozen_state,
    iter_per_sample_gradients,
    select_parameters,
)
from tda.task import Task

DiagonalCurvature = Literal["gauss_newton", "empirical_fisher"]
DIAGONAL_CHUNK_BYTES = 2**30
"""Working memory the Gauss-Newton diagonal may take per chunk of examples."""


def gauss_newton_diagonal(
    model: nn.Module,
    task: Task,
    data: Examples,
    *,
    parameters: Sequence[str] | None = None,
    chunk_size: int = 64,
) -> Tensor:
    r"""``[p]``: the diagonal of the Gauss-Newton matrix of the mean loss over ``data``.

    Memory per chunk is ``chunk_size * C * (p + C)`` (the logit Jacobians and the loss's Hessian in
    the logits; ``C = T * V`` for a sequence model's ``[T, V]`` logits); the chunk is made smaller
    where that would pass :data:`DIAGONAL_CHUNK_BYTES`. A loss that sums one term per position
    (a language model's token losses) is multiplied out position by position
    (:func:`_sandwich_diagonal`).
    """
    if len(data) == 0:
        raise ValueError("cannot compute a curvature diagonal over an empty set of examples")
    check_input_dtype(model, data.inputs)
    params = select_parameters(model, parameters)
    state = frozen_state(model, params)

    def one_example(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        def logits_of(p: dict[str, Tensor]) -> Tensor:  # [C], or [T, V] for a sequence
            return functional_call(model, {**state, **p}, (x.unsqueeze(0),)).squeeze(0)

        logits = logits_of(params)
        jacobian = flatten(jacrev(logits_of)(params), logits.numel())  # [C, p] (C = T * V)
        loss = lambda o: task.loss(o.reshape(logits.shape), y)  # noqa: E731
        return jacobian, hessian(loss)(logits.reshape(-1))  # [C, p], [C, C]

    total = None
    shape = _logit_shape(model, data)
    chunk_size = _fitting_chunk(shape, params, chunk_size)
    with evaluation_mode(model):
        for start in range(0, len(data), chunk_size):
            x, y = to_device_of(
                model,
                data.inputs[start : start + chunk_size],
                data.targets[start : start + chunk_size],
            )
            chunk = _sandwich_diagonal(*vmap(one_example)(x, y), positions=shape[:-1].numel())
            total = chunk if total is None else total + chunk
    return total / len(data)


def _sandwich_diagonal(jacobians: Tensor, hessians: Tensor, positions: int) -> Tensor:
    r"""``[p]``: :math:`\sum_i \operatorname{diag}(J_i^\top H_i J_i)` over a chunk's ``[B, C, p]``
    logit Jacobians and ``[B, C, C]`` loss Hessians, ``C = T * V`` over ``T`` positions.

    Where every ``H_i`` is block-diagonal over the positions (no second derivative across two
    positions is nonzero, as for a sum of token losses), the product is taken block by block:
    ``T V^2 p`` operations an example instead of ``T^2 V^2 p``, which on a language model is most
    of the work. Any nonzero term across positions takes the full product.
    """
    batch, count, size = jacobians.shape
    classes = count // positions
    blocks = hessians.reshape(batch, positions, classes, positions, classes)
    within = torch.diagonal(blocks, dim1=1, dim2=3)  # [B, V, V, T]
    if int(within.count_nonzero()) != int(hessians.count_nonzero()):
        return ((hessians @ jacobians) * jacobians).sum((0, 1))
    per_position = jacobians.reshape(batch, positions, classes, size)
    products = torch.einsum("bvwt,btwp->btvp", within, per_position)
    return (products * per_position).sum((0, 1, 2))


def _logit_shape(model: nn.Module, data: Examples) -> torch.Size:
    """One example's logit shape: ``[C]``, or ``[T, V]`` for a sequence model."""
    with torch.no_grad(), evaluation_mode(model):
        return model(*to_device_of(model, data.inputs[:1])).shape[1:]


def _fitting_chunk(shape: torch.Size, params: dict, chunk_size: int) -> int:
    """``chunk_size``, lowered (to 1 at least) so a chunk's ``C * p`` Jacobians and ``C * C``
    logit Hessians (``C`` logits of ``shape``) fit :data:`DIAGONAL_CHUNK_BYTES`: a language
    model's ``C = T * V`` is large."""
    count = shape.numel()
    size = sum(p.numel() for p in params.values())
    item = next(iter(params.values())).element_size()
    per_example = (count * size + count * count) * item
    return max(1, min(chunk_size, DIAGONAL_CHUNK_BYTES // per_example))


def empirical_fisher_diagonal(
    model: nn.Module,
    task: Task,
    data: Examples,
    *,
    parameters: Sequence[str] | None = None,
    chunk_size: int = 256,
) -> Tensor:
    r"""``[p]``: :math:`\frac1n\sum_i g_i \odot g_i` for per-sample loss gradients :math:`g_i`."""
    total = None
    for block in iter_per_sample_gradients(
        model,
        task,
        data.inputs,
        data.targets,
        function="loss",
        parameters=parameters,
        chunk_size=chunk_size,
    ):
        squares = (block * block).sum(0)
        total = squares if total is None else total + squares
    return total / len(data)


def _check_finite_diagonal(diagonal: Tensor) -> None:
    """Refuse NaN or infinite curvature entries, which the zero-entry check below would misread
    as zero curvature and answer with advice to raise the damping."""
    finite = torch.isfinite(diagonal)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0, 0])
        raise NonFiniteGradientError(
            f"the curvature diagonal is not finite (entry {first} of {len(diagonal)}); check the "
            "model's outputs, the inputs and the targets (one outside the model's classes "
            "gives NaN)"
        )


@dataclass
class DiagonalSolver:
    r""":math:`(\operatorname{diag}(C) + \lambda I)^{-1}v`: elementwise division.

    Args:
        curvature: ``"gauss_newton"`` (exact GGN diagonal; costs ``C`` gradient passes) or
            ``"empirical_fisher"`` (one pass of per-sample loss gradients).
        damping: :math:`\lambda`, absolute; must be positive where a diagonal entry is zero.
        chunk_size: examples per vectorised call.
    """

    curvature: DiagonalCurvature = "gauss_newton"
    damping: float = 0.01
    chunk_size: int = 64
    diagonal: Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_curvature(self.curvature, ("gauss_newton", "empirical_fisher"))
        check_damping(self.damping)

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train: Examples,
        *,
        parameters: Sequence[str] | None = None,
    ) -> DiagonalSolver:
        """Compute and keep the ``[p]`` diagonal.

        Raises:
            NonFiniteGradientError: a diagonal entry is NaN or infinite (e.g. a target outside
                the model's classes).
            ValueError: a zero diagonal entry without damping, or floating inputs of another
                dtype than the model.
        """
        build = (
            gauss_newton_diagonal if self.curvature == "gauss_newton" else empirical_fisher_diagonal
        )
        diagonal = build(model, task, train, parameters=parameters, chunk_size=self.chunk_size)
        _check_finite_diagonal(diagonal)
        if not bool((diagonal + self.damping > 0).all()):
            raise ValueError(
                "the curvature diagonal has zero entries (parameters the loss does not depend "
                "on); use damping > 0"
            )
        self.diagonal = diagonal
        return self

    def solve(self, vectors: Tensor) -> Tensor:
        r"""``[q, p]``: :math:`v / (\operatorname{diag}(C) + \lambda)` per row."""
        size = None if self.diagonal is None else len(self.diagonal)
        check_vectors(vectors, size, type(self).__name__)
        return vectors / (self.diagonal.to(vectors) + self.damping)

    def config(self) -> dict:
        """Solver name and hyperparameters."""
        return {"solver": "diagonal", "curvature": self.curvature, "damping": self.damping}


@dataclass
class IdentitySolver:
    r"""No curvature: :math:`(0 + \lambda I)^{-1}v = v / \lambda` (default :math:`\lambda = 1`)."""

    damping: float = 1.0
    _size: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_damping(self.damping)
        if self.damping == 0:
            raise ValueError("IdentitySolver needs damping > 0 (it solves λ x = v)")

    def fit(
        self,
        model: nn.Module,
        task: Task,
        train: Examples,
        *,
        parameters: Sequence[str] | None = None,
    ) -> IdentitySolver:
        """Record the parameter count; nothing else to fit."""
        self._size = sum(p.numel() for p in select_parameters(model, parameters).values())
        return self

    def solve(self, vectors: Tensor) -> Tensor:
        r"""``[q, p]``: :math:`v / \lambda`."""
        check_vectors(vectors, self._size, type(self).__name__)
        return vectors / self.damping

    def config(self) -> dict:
        """Solver name and hyperparameters."""
        return {"solver": "identity", "damping": self.damping}
