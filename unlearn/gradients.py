r"""Summed loss gradients over a set of examples, the raw material of weight masks.

.. math:: g_S = \nabla_\theta \sum_{z \in S} \ell(z; \theta)

taken in evaluation mode (no dropout), batch by batch, without touching ``.grad``. Parameters
that cannot move (``requires_grad=False``) or that the loss does not use get a zero gradient, as
in SalUn's reference code, so masks built from it rank them last.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.grads import evaluation_mode
from tda.task import ClassificationTask, Task


def summed_gradient(
    model: nn.Module, examples: Examples, *, task: Task | None = None, batch_size: int = 256
) -> dict[str, Tensor]:
    r""":math:`\nabla_\theta \sum_{z\in S}\ell(z;\theta)` per parameter name.

    Raises:
        ValueError: ``examples`` is empty, or no parameter requires gradients.
    """
    if len(examples) == 0:
        raise ValueError("a summed loss gradient needs at least one example")
    task = task if task is not None else ClassificationTask()
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    names, parameters = _differentiable(model)
    with evaluation_mode(model):
        for start in range(0, len(examples), batch_size):
            inputs = examples.inputs[start : start + batch_size]
            targets = examples.targets[start : start + batch_size]
            loss = task.loss(model(inputs), targets).sum()
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
            for name, gradient in zip(names, gradients, strict=True):
                if gradient is not None:  # None: the loss does not use this parameter
                    total[name].add_(gradient)
    return total


def _differentiable(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    """Names and parameters that require gradients (frozen ones keep a zero gradient)."""
    chosen = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not chosen:
        raise ValueError("every parameter of the model has requires_grad=False; nothing to rank")
    names, parameters = zip(*chosen, strict=True)
    return list(names), list(parameters)
