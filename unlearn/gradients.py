r"""Summed loss gradients over a set of examples, the raw material of weight masks.

.. math:: g_S = \nabla_\theta \sum_{z \in S} \ell(z; \theta)

taken in evaluation mode (no dropout), batch by batch, without touching ``.grad``.
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
        ValueError: ``examples`` is empty.
    """
    if len(examples) == 0:
        raise ValueError("a summed loss gradient needs at least one example")
    task = task if task is not None else ClassificationTask()
    names, parameters = zip(*model.named_parameters(), strict=True)
    total = [torch.zeros_like(p) for p in parameters]
    with evaluation_mode(model):
        for start in range(0, len(examples), batch_size):
            inputs = examples.inputs[start : start + batch_size]
            targets = examples.targets[start : start + batch_size]
            loss = task.loss(model(inputs), targets).sum()
            for accumulated, gradient in zip(
                total, torch.autograd.grad(loss, parameters), strict=True
            ):
                accumulated.add_(gradient)
    return dict(zip(names, total, strict=True))
