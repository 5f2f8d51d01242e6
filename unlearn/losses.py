r"""Losses that unlearning phases minimise, built from a task's per-example loss."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from tda.data.examples import Examples
from tda.task import ClassificationTask, Task
from unlearn.loop import Progress


@dataclass(frozen=True)
class WeightedLoss:
    r"""A weighted sum of mean task losses over the step's batches.

    .. math:: L(\theta) = \sum_s w_s \, \frac{1}{|B_s|} \sum_{z \in B_s} \ell(z; \theta)

    e.g. fine-tuning ``{"retain": 1}``, gradient ascent ``{"forget": -1}``, gradient difference
    ``{"forget": -1, "retain": gamma}``.

    Attributes:
        weights: :math:`w_s` per source name; every name must be a source of the phase.
        task: supplies :math:`\ell` (default cross-entropy).
    """

    weights: Mapping[str, float]
    task: Task = field(default_factory=ClassificationTask)

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValueError("WeightedLoss needs at least one weighted source")

    def __call__(self, model: nn.Module, batches: Mapping[str, Examples], progress: Progress):
        total: Tensor | float = 0.0
        for source, weight in self.weights.items():
            if source not in batches:
                raise ValueError(f"loss weights source {source!r}, which the phase does not feed")
            batch = batches[source]
            total = total + weight * self.task.loss(model(batch.inputs), batch.targets).mean()
        return total
