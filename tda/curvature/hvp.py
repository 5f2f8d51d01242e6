r"""Curvature-vector products of the mean training loss, with ``torch.func``.

For training examples :math:`z_i = (x_i, y_i)`, logits :math:`o_i = o(x_i;\theta)` and loss
:math:`\ell`, the mean loss :math:`L(\theta) = \frac1n\sum_i \ell(o_i, y_i)` has

* Hessian-vector products :math:`Hv = \nabla^2_\theta L\, v`, computed forward-over-reverse
  (``jvp`` of ``grad``);
* Gauss-Newton (GGN) products :math:`Gv = \frac1n\sum_i J_i^\top H_{\text{out},i} J_i v` with
  :math:`J_i = \partial o_i/\partial\theta` and
  :math:`H_{\text{out},i} = \partial^2\ell/\partial o_i^2`,
  computed as ``jvp`` (:math:`J_iv`), a logit-space HVP, then ``vjp`` (:math:`J_i^\top u`).

Vectors are ``[q, p]``, flattened in :mod:`tda.grads` parameter order. Examples are processed
``chunk_size`` at a time (memory grows with ``chunk_size * q``, never with ``n``) and the ``q``
vectors are batched with ``vmap``; a model ``vmap`` cannot trace falls back to a loop over vectors
(only where that loop succeeds: a failure of the model itself surfaces as itself).
The model is evaluated in eval mode with its current parameters and buffers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from tda.curvature.base import Curvature, check_curvature, check_damping
from tda.data.examples import Examples, check_input_dtype
from tda.device import to_device_of
from tda.grads import (
    VMAP_ERRORS,
    VmapFallbackWarning,
    evaluation_mode,
    frozen_state,
    select_parameters,
)
from tda.task import Task

ChunkProduct = Callable[[dict[str, Tensor], Tensor, Tensor, dict[str, Tensor]], dict[str, Tensor]]


def unflatten(vectors: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """``[q, p]`` -> ``{name: [q, *shape]}`` in the order of ``params``."""
    sizes = [p.numel() for p in params.values()]
    if vectors.shape[1] != sum(sizes):
        raise ValueError(
            f"vectors have {vectors.shape[1]} coordinates but the selected parameters have "
            f"{sum(sizes)}"
        )
    pieces = torch.split(vectors, sizes, dim=1)
    return {
        name: piece.reshape(len(vectors), *p.shape)
        for (name, p), piece in zip(params.items(), pieces, strict=True)
    }


def flatten(tensors: dict[str, Tensor], batch: int) -> Tensor:
    """``{name: [q, *shape]}`` -> ``[q, p]`` (``q = 0`` too: ``reshape(0, -1)`` is ambiguous)."""
    if batch == 0:
        return torch.cat([t.reshape(0, math.prod(t.shape[1:])) for t in tensors.values()], dim=1)
    return torch.cat([t.reshape(batch, -1) for t in tensors.values()], dim=1)


def _logits_function(model: nn.Module, state: dict[str, Tensor], inputs: Tensor):
    def logits(params: dict[str, Tensor]) -> Tensor:
        return functional_call(model, {**state, **params}, (inputs,))

    return logits


def _hessian_chunk(model: nn.Module, task: Task, state: dict[str, Tensor]) -> ChunkProduct:
    def product(params, inputs, targets, vectors):
        logits_of = _logits_function(model, state, inputs)

        def loss_sum(p: dict[str, Tensor]) -> Tensor:
            return task.loss(logits_of(p), targets).sum()

        return jvp(grad(loss_sum), (params,), (vectors,))[1]

    return product


def _gauss_newton_chunk(model: nn.Module, task: Task, state: dict[str, Tensor]) -> ChunkProduct:
    def product(params, inputs, targets, vectors):
        logits_of = _logits_function(model, state, inputs)
        logits, jacobian_vector = jvp(logits_of, (params,), (vectors,))  # [B, C] each
        logit_gradient = grad(lambda o: task.loss(o, targets).sum())
        output_hvp = jvp(logit_gradient, (logits,), (jacobian_vector,))[1]  # [B, C]
        return vjp(logits_of, params)[1](output_hvp)[0]

    return product


def _apply_chunk(product: ChunkProduct, params, inputs, targets, vectors: Tensor) -> Tensor:
    """The chunk's products, batched over the vectors with ``vmap``; where ``vmap`` fails, looped
    over them (outside the ``except``, so that the loop's own failure is raised alone), with a
    warning once the loop has succeeded."""
    tangents = unflatten(vectors, params)
    try:
        batched = vmap(product, in_dims=(None, None, None, 0))
        return flatten(batched(params, inputs, targets, tangents), len(vectors))
    except VMAP_ERRORS as error:
        failure = error
    looped = _loop_over_vectors(product, params, inputs, targets, vectors)
    warnings.warn(
        f"vmap could not batch curvature products for this model ({type(failure).__name__}: "
        f"{failure}); looping over the vectors instead, which is slower but exact",
        VmapFallbackWarning,
        stacklevel=4,
    )
    return looped


def _loop_over_vectors(product: ChunkProduct, params, inputs, targets, vectors: Tensor) -> Tensor:
    rows = []
    for row in vectors:
        single = unflatten(row.unsqueeze(0), params)
        single = {name: t.squeeze(0) for name, t in single.items()}
        rows.append(flatten(product(params, inputs, targets, single), 1))
    return torch.cat(rows)


def curvature_vector_product(
    model: nn.Module,
    task: Task,
    data: Examples,
    vectors: Tensor,
    *,
    curvature: Curvature = "gauss_newton",
    parameters: Sequence[str] | None = None,
    chunk_size: int = 256,
) -> Tensor:
    r"""``[q, p] -> [q, p]``: :math:`Cv` for the curvature :math:`C` of the mean loss over ``data``.

    Args:
        model: the network, evaluated in eval mode at its current parameters.
        task: supplies the per-example ``loss`` of the logits.
        data: the examples whose mean loss is differentiated (on the model's device).
        vectors: ``[q, p]`` in :mod:`tda.grads` parameter order.
        curvature: ``"hessian"`` or ``"gauss_newton"``.
        parameters: names of the parameters (default: all trainable ones).
        chunk_size: examples per vectorised call.

    Raises:
        ValueError: empty data, floating inputs of another dtype than the model, a bad
            ``chunk_size``, or vectors of the wrong width.
    """
    check_curvature(curvature)
    if len(data) == 0:
        raise ValueError("cannot compute a curvature product over an empty set of examples")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    check_input_dtype(model, data.inputs)
    params = select_parameters(model, parameters)
    state = frozen_state(model, params)
    build = _hessian_chunk if curvature == "hessian" else _gauss_newton_chunk
    product = build(model, task, state)
    total = torch.zeros_like(vectors)
    with evaluation_mode(model):
        for start in range(0, len(data), chunk_size):
            inputs, targets = to_device_of(
                model,
                data.inputs[start : start + chunk_size],
                data.targets[start : start + chunk_size],
            )
            total += _apply_chunk(product, params, inputs, targets, vectors)
    return total / len(data)


def hessian_vector_product(
    model: nn.Module,
    task: Task,
    data: Examples,
    parameters: Sequence[str] | None,
    vectors: Tensor,
    *,
    chunk_size: int = 256,
) -> Tensor:
    r"""``[q, p]``: :math:`\nabla^2_\theta L\, v` for the mean loss :math:`L` over ``data``."""
    return curvature_vector_product(
        model,
        task,
        data,
        vectors,
        curvature="hessian",
        parameters=parameters,
        chunk_size=chunk_size,
    )


def gauss_newton_vector_product(
    model: nn.Module,
    task: Task,
    data: Examples,
    parameters: Sequence[str] | None,
    vectors: Tensor,
    *,
    chunk_size: int = 256,
) -> Tensor:
    r"""``[q, p]``: :math:`\frac1n\sum_i J_i^\top H_{\text{out},i} J_i v` over ``data``."""
    return curvature_vector_product(
        model,
        task,
        data,
        vectors,
        curvature="gauss_newton",
        parameters=parameters,
        chunk_size=chunk_size,
    )


@dataclass(frozen=True)
class DampedCurvature:
    r"""The operator :math:`v \mapsto (C + \lambda I)v` of a fitted problem, for iterative solvers.

    Holds references, not copies: the model must not change between ``fit`` and ``solve``.
    """

    model: nn.Module
    task: Task
    train: Examples
    parameters: Sequence[str] | None
    curvature: Curvature
    damping: float
    chunk_size: int

    def __post_init__(self) -> None:
        check_curvature(self.curvature)
        check_damping(self.damping)
        check_input_dtype(self.model, self.train.inputs)  # at fit, not first at solve

    @property
    def size(self) -> int:
        """Number of coordinates ``p``."""
        return sum(p.numel() for p in select_parameters(self.model, self.parameters).values())

    def __call__(self, vectors: Tensor, data: Examples | None = None) -> Tensor:
        r""":math:`(C_{\text{data}} + \lambda I)v` (``data`` defaults to the whole training set)."""
        product = curvature_vector_product(
            self.model,
            self.task,
            self.train if data is None else data,
            vectors,
            curvature=self.curvature,
            parameters=self.parameters,
            chunk_size=self.chunk_size,
        )
        return product + self.damping * vectors
