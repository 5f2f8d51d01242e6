r"""GA: gradient ascent on the forget set.

.. math:: \min_\theta \; -\frac{1}{|F|}\sum_{z\in F}\ell(z;\theta)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from tda.task import ClassificationTask, Task
from unlearn.loop import LoopConfig, Phase, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit, ascent_loop


@dataclass(frozen=True)
class GradientAscent:
    r"""Gradient ascent (GA): raise the loss on :math:`F`.

    The objective is unbounded below, so the number of epochs and the learning rate are what stop
    it; small defaults (5 epochs, lr 1e-3).

    Attributes:
        loop: optimiser, epochs, batch size and schedule.
        task: supplies :math:`\ell` (default cross-entropy; a language model's token NLL with
            :class:`~tda.task.LanguageModelingTask`).
    """

    loop: LoopConfig = field(default_factory=ascent_loop)
    task: Task = field(default_factory=ClassificationTask)
    requires_forget_set: ClassVar[bool] = True

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        phase = Phase("forget", {"forget": split.forget}, WeightedLoss({"forget": -1.0}, self.task))
        return unlearning_loop(model, [phase], self.loop, mask=mask, seed=seed)
