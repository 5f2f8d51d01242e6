r"""GradDiff: ascend on the forget set while descending on the retain set.

.. math:: \min_\theta \; -\frac{1}{|B_F|}\sum_{z\in B_F}\ell(z;\theta)
   + \gamma \, \frac{1}{|B_R|}\sum_{z\in B_R}\ell(z;\theta)

with one forget batch :math:`B_F` and one retain batch :math:`B_R` per step; a pass over
:math:`F` is an epoch and retain batches cycle through a reshuffled :math:`R`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from tda.task import ClassificationTask, Task
from unlearn.loop import LoopConfig, Phase, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit, ascent_loop, check_non_negative_finite


@dataclass(frozen=True)
class GradientDifference:
    r"""Gradient difference (GradDiff): :math:`-\mathcal{L}_F + \gamma\,\mathcal{L}_R` per step.

    Attributes:
        loop: optimiser, epochs, batch size and schedule.
        retain_weight: :math:`\gamma \ge 0`.
        task: supplies :math:`\ell` (default cross-entropy; a language model's token NLL with
            :class:`~tda.task.LanguageModelingTask`).
    """

    loop: LoopConfig = field(default_factory=ascent_loop)
    retain_weight: float = 1.0
    task: Task = field(default_factory=ClassificationTask)
    requires_forget_set: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_non_negative_finite("retain_weight", self.retain_weight)

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        loss = WeightedLoss({"forget": -1.0, "retain": self.retain_weight}, self.task)
        sources = {"forget": split.forget, "retain": split.retain}
        phase = Phase("forget and retain", sources, loss, lead="forget")
        return unlearning_loop(model, [phase], self.loop, mask=mask, seed=seed)
