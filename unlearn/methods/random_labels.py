r"""RL: train on the forget set relabelled at random (never the true label), then on the retain set.

Each epoch is a pass over :math:`F` with labels :math:`\tilde y \ne y` and a pass over :math:`R`
with true labels:

.. math:: \min_\theta \frac{1}{|F|}\sum_{(x, y)\in F}\ell\big((x, \tilde y);\theta\big)
   \quad\text{then}\quad \min_\theta \frac{1}{|R|}\sum_{z\in R}\ell(z;\theta),
   \qquad \tilde y = (y + u) \bmod C,\; u \sim \mathcal{U}\{1, \dots, C-1\}.

The labels are drawn once from the seed. SalUn runs the same procedure inside its saliency mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.outputs import logits_of
from unlearn.loop import LoopConfig, Phase, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit


def random_other_labels(targets: Tensor, num_classes: int, seed: int) -> Tensor:
    r"""Labels ``[n]`` uniform over the classes other than each target: :math:`(y + u) \bmod C`."""
    if num_classes < 2:
        raise ValueError(f"random labels need at least 2 classes, got {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(targets),), generator=generator)
    return (targets + shift.to(targets.device)) % num_classes


def relabelled_forget_set(model: nn.Module, forget: Examples, seed: int) -> Examples:
    """The forget examples with random wrong labels; the class count is read from the logits."""
    num_classes = logits_of(model, Examples(forget.inputs[:1], forget.targets[:1])).shape[-1]
    return Examples(forget.inputs, random_other_labels(forget.targets, num_classes, seed))


@dataclass(frozen=True)
class RandomLabels:
    """Random labelling (RL): fit wrong labels on :math:`F` while keeping :math:`R` fitted.

    Attributes:
        loop: optimiser, epochs, batch size and schedule.
    """

    loop: LoopConfig = field(default_factory=LoopConfig)
    requires_forget_set: ClassVar[bool] = True

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        relabelled = relabelled_forget_set(model, split.forget, seed)
        phases = [
            Phase("forget (random labels)", {"forget": relabelled}, WeightedLoss({"forget": 1.0})),
            Phase("retain", {"retain": split.retain}, WeightedLoss({"retain": 1.0})),
        ]
        return unlearning_loop(model, phases, self.loop, mask=mask, seed=seed)
