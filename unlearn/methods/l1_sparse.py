r"""ℓ1-sparse unlearning (Jia et al. 2023): fine-tune on the retain set with a decaying ℓ1 penalty.

.. math:: \min_\theta \frac{1}{|B_R|}\sum_{z\in B_R}\ell(z;\theta) + \gamma_t \lVert\theta\rVert_1,
   \qquad \gamma_t = \gamma \left(1 - \frac{t}{T}\right)

for epoch :math:`t = 0, \dots, T-1` of :math:`T`: the penalty starts at :math:`\gamma` and decays
linearly towards 0, pushing the model to a sparse solution early and refitting :math:`R` late.
:math:`\lVert\theta\rVert_1` sums over every parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from tda.data.examples import Examples
from tda.task import ClassificationTask, Task
from unlearn.loop import LoopConfig, Phase, Progress, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit, check_non_negative_finite


@dataclass(frozen=True)
class DecayingL1Loss:
    r"""Retain cross-entropy plus :math:`\gamma_t \lVert\theta\rVert_1` (:math:`\gamma_t` decays).

    Attributes:
        strength: :math:`\gamma \ge 0`, the penalty in the first epoch.
        task: supplies the retain loss (default cross-entropy).
    """

    strength: float
    task: Task = field(default_factory=ClassificationTask)

    def strength_at(self, progress: Progress) -> float:
        r""":math:`\gamma_t = \gamma (1 - t / T)`."""
        return self.strength * (1.0 - progress.fraction)

    def __call__(self, model: nn.Module, batches: Mapping[str, Examples], progress: Progress):
        fit: Tensor = WeightedLoss({"retain": 1.0}, self.task)(model, batches, progress)
        l1_norm = sum(parameter.abs().sum() for parameter in model.parameters())
        return fit + self.strength_at(progress) * l1_norm


@dataclass(frozen=True)
class L1Sparse:
    r"""ℓ1-sparse unlearning: FT on :math:`R` with a linearly decaying ℓ1 penalty.

    Attributes:
        loop: optimiser, epochs, batch size and schedule.
        strength: :math:`\gamma`, the initial ℓ1 weight (reference order 5e-4 at CIFAR scale).
        task: supplies :math:`\ell` (default cross-entropy; a language model's token NLL with
            :class:`~tda.task.LanguageModelingTask`).
    """

    loop: LoopConfig = field(default_factory=LoopConfig)
    strength: float = 5e-4
    task: Task = field(default_factory=ClassificationTask)
    requires_forget_set: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_non_negative_finite("strength", self.strength)

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        phase = Phase(
            "retain (l1)", {"retain": split.retain}, DecayingL1Loss(self.strength, self.task)
        )
        return unlearning_loop(model, [phase], self.loop, mask=mask, seed=seed)
