"""Batched evaluation of a task on examples: outputs (e.g. margins), losses and accuracy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.device import to_device_of
from tda.grads import evaluation_mode
from tda.task import IGNORE_INDEX, Task


@torch.no_grad()
def logits_of(model: nn.Module, examples: Examples, batch_size: int = 1024) -> Tensor:
    """Logits ``[n, C]`` of ``model`` (in eval mode) on ``examples``, on the examples' device
    (``[0, C]`` for no examples: the model is run on the empty batch)."""
    home = examples.inputs.device
    with evaluation_mode(model):
        parts = [
            model(*to_device_of(model, examples.inputs[start : start + batch_size])).to(home)
            for start in range(0, max(len(examples), 1), batch_size)
        ]
    return torch.cat(parts)


def task_outputs(model: nn.Module, task: Task, examples: Examples, batch_size: int = 1024):
    """The task's attributed output ``[n]`` (the margin for classification) for each example."""
    return task.output(logits_of(model, examples, batch_size), examples.targets)


def task_losses(model: nn.Module, task: Task, examples: Examples, batch_size: int = 1024):
    """The task's training loss ``[n]`` for each example (the model in eval mode)."""
    return task.loss(logits_of(model, examples, batch_size), examples.targets)


def accuracy(model: nn.Module, examples: Examples, batch_size: int = 1024) -> float:
    """Fraction of examples whose arg-max logit is the target; for sequence targets ``[n, T]``,
    of the positions whose target is counted (not :data:`~tda.task.IGNORE_INDEX`). A float64
    ratio of counts: 23/25 is ``0.92``, not a float32 mean's ``0.9200000166893005``.

    Raises:
        ValueError: no example, or no counted position (the fraction would be NaN).
    """
    counted = examples.targets != IGNORE_INDEX
    total = int(counted.sum())
    if total == 0:
        raise ValueError("accuracy needs at least one example with a counted target")
    predictions = logits_of(model, examples, batch_size).argmax(dim=-1)
    return int(((predictions == examples.targets) & counted).sum()) / total
