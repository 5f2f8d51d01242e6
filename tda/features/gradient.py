r"""Gradient features: per-sample gradients followed by a random projection.

For each example, :math:`\phi_i = P^\top \nabla_\theta f(z_i;\theta)` (``[k]``), where
:math:`P` is the projector's matrix and :math:`f` the task's output, together with TRAK's
out-to-loss weight :math:`Q_i` evaluated at the same parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from tda.device import to_device_of
from tda.grads import (
    TaskFunction,
    evaluation_mode,
    iter_per_sample_gradients,
    parameter_count,
    select_parameters,
)
from tda.projection import Projector
from tda.task import ClassificationTask, Task


@dataclass(frozen=True)
class FeatureBatch:
    """Features ``[b, k]`` and out-to-loss weights ``[b]`` of a batch of examples."""

    features: Tensor
    out_to_loss: Tensor


@dataclass(frozen=True)
class GradientFeaturizer:
    """Projected per-sample gradients of the task's output (or loss).

    Args:
        projector: maps ``[b, p]`` gradients to ``[b, k]`` features.
        task: defines the output that is differentiated and the out-to-loss weight.
        parameters: names of the parameters to differentiate (default: all trainable ones).
        function: ``"output"`` (TRAK, influence queries) or ``"loss"``.
        chunk_size: examples per vectorised gradient call and per forward pass for the
            out-to-loss weight (bounds memory at ``chunk_size * p`` and a chunk's activations).
    """

    projector: Projector
    task: Task = ClassificationTask()
    parameters: tuple[str, ...] | None = None
    function: TaskFunction = "output"
    chunk_size: int = 256

    def __post_init__(self) -> None:
        if self.parameters is not None:  # accept any sequence (e.g. a Hydra list); store a tuple
            object.__setattr__(self, "parameters", tuple(self.parameters))

    @property
    def seed(self) -> int:
        """The projector's seed."""
        return self.projector.seed

    def with_seed(self, seed: int) -> GradientFeaturizer:
        """The same featurizer with the projector reseeded (e.g. per checkpoint)."""
        return replace(self, projector=self.projector.with_seed(seed))

    def output_dim(self, model: nn.Module) -> int:
        """Feature dimension ``k`` for ``model``."""
        return self.projector.output_dim(parameter_count(model, self.parameters))

    def parameter_names(self, model: nn.Module) -> list[str]:
        """Names of the parameters differentiated for ``model`` (the trainable ones now, for
        ``parameters=None``), in model order."""
        return list(select_parameters(model, self.parameters))

    def config(self) -> dict:
        """JSON-able description; stores are keyed by it."""
        return {
            "featurizer": type(self).__name__,
            "projector": self.projector.config(),
            "task": task_config(self.task),
            "parameters": list(self.parameters) if self.parameters else None,
            "function": self.function,
        }

    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> FeatureBatch:
        """Features of ``inputs``/``targets`` under ``model``'s current parameters."""
        gradients = iter_per_sample_gradients(
            model,
            self.task,
            inputs,
            targets,
            function=self.function,
            parameters=self.parameters,
            chunk_size=self.chunk_size,
        )
        features = torch.cat([self.projector.project(chunk) for chunk in gradients])
        # Q chunk by chunk too: one forward pass over a whole shard can exhaust memory
        weights = [
            out_to_loss(model, self.task, *_rows(inputs, targets, start, self.chunk_size))
            for start in range(0, len(inputs), self.chunk_size)
        ]
        return FeatureBatch(features=features, out_to_loss=torch.cat(weights))


def _rows(inputs: Tensor, targets: Tensor, start: int, size: int) -> tuple[Tensor, Tensor]:
    return inputs[start : start + size], targets[start : start + size]


def task_config(task: Task) -> str:
    """The task's name in a store's key, with its settings where it has any.

    A dataclass task with fields is written as its ``repr`` (``"ClassLogit(class_index=2)"``), so
    stores of two classes' logits differ; any other task by its class name
    (``"ClassificationTask"``).
    """
    if dataclasses.is_dataclass(task) and dataclasses.fields(task):
        return repr(task)
    return type(task).__name__


@torch.no_grad()
def out_to_loss(model: nn.Module, task: Task, inputs: Tensor, targets: Tensor) -> Tensor:
    """TRAK's weight :math:`Q_i` for each example ``[b]``."""
    with evaluation_mode(model):
        inputs, targets = to_device_of(model, inputs, targets)
        return task.out_to_loss(model(inputs), targets)
