r"""FT: fine-tune on the retain set, :math:`\min_\theta \frac{1}{|R|}\sum_{z\in R}\ell(z;\theta)`.

Nothing pushes the model away from :math:`F` directly; forgetting comes from drifting while the
retain set is refitted (catastrophic forgetting), so FT is cheap but often forgets too little.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from tda.task import ClassificationTask, Task
from unlearn.loop import LoopConfig, Phase, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit


@dataclass(frozen=True)
class FineTune:
    r"""Fine-tuning (FT): continue training on the retain set only.

    Attributes:
        loop: optimiser, epochs, batch size and schedule.
        task: supplies :math:`\ell` (default cross-entropy; a language model's token NLL with
            :class:`~tda.task.LanguageModelingTask`).
    """

    loop: LoopConfig = field(default_factory=LoopConfig)
    task: Task = field(default_factory=ClassificationTask)
    requires_forget_set: ClassVar[bool] = False

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        phase = Phase("retain", {"retain": split.retain}, WeightedLoss({"retain": 1.0}, self.task))
        return unlearning_loop(model, [phase], self.loop, mask=mask, seed=seed)
