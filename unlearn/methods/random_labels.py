r"""RL: fit the forget set relabelled at random (never the true label) while fitting the retain set.

With ``batches="separate"`` (the default) each epoch is a pass over :math:`F` with labels
:math:`\tilde y \ne y` and then a pass over :math:`R` with true labels:

.. math:: \min_\theta \frac{1}{|F|}\sum_{(x, y)\in F}\ell\big((x, \tilde y);\theta\big)
   \quad\text{then}\quad \min_\theta \frac{1}{|R|}\sum_{z\in R}\ell(z;\theta),
   \qquad \tilde y = (y + u) \bmod C,\; u \sim \mathcal{U}\{1, \dots, C-1\}.

With ``batches="mixed"`` each epoch is one shuffled pass over :math:`F \cup R` (relabelled
:math:`F`), so every step minimises the mean loss of a uniform sample of both: the forget points
weigh by their share of the data, and :math:`R` anchors every step. SalUn's reference code uses
the separate passes for CIFAR-10 and the mixed one for CIFAR-100 and Tiny ImageNet.

The labels are drawn once from the seed. SalUn runs the same procedure inside its saliency mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.outputs import logits_of
from tda.task import outside_classes
from unlearn.loop import LoopConfig, Phase, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit


def random_other_labels(targets: Tensor, num_classes: int, seed: int) -> Tensor:
    r"""Labels ``[n]`` uniform over the classes other than each target: :math:`(y + u) \bmod C`.

    Raises:
        ValueError: fewer than 2 classes, targets that are not one class per example (``[n]``,
            e.g. a language model's token targets ``[n, T]``), or a target that is no class
            index ``0..num_classes-1`` (fractional or NaN floats included; the modulo would
            silently turn it into a class).
    """
    if num_classes < 2:
        raise ValueError(f"random labels need at least 2 classes, got {num_classes}")
    if targets.dim() != 1:
        raise ValueError(
            "random labels take one class target per example, shape [n]; got targets of shape "
            f"{tuple(targets.shape)}"
        )
    outside = outside_classes(targets, num_classes).nonzero()
    if len(outside):
        row = int(outside[0])
        raise ValueError(
            f"target {targets[row].item()} of example {row} is outside the model's "
            f"{num_classes} classes"
        )
    generator = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, (len(targets),), generator=generator)
    return (targets + shift.to(targets.device)) % num_classes


def relabelled_forget_set(model: nn.Module, forget: Examples, seed: int) -> Examples:
    """The forget examples with random wrong labels; the class count is read from the logits."""
    num_classes = logits_of(model, Examples(forget.inputs[:1], forget.targets[:1])).shape[-1]
    return Examples(forget.inputs, random_other_labels(forget.targets, num_classes, seed))


BATCHES = ("separate", "mixed")


def check_batches(batches: str) -> None:
    """Refuse a batch recipe other than ``"separate"`` and ``"mixed"``."""
    if batches not in BATCHES:
        raise ValueError(f"batches must be one of {BATCHES}, got {batches!r}")


def random_label_phases(
    relabelled: Examples, retain: Examples, batches: Literal["separate", "mixed"]
) -> list[Phase]:
    """The phases of one RL epoch: F's pass then R's (``separate``) or one pass over both
    shuffled together (``mixed``)."""
    check_batches(batches)
    if batches == "separate":
        return [
            Phase("forget (random labels)", {"forget": relabelled}, WeightedLoss({"forget": 1.0})),
            Phase("retain", {"retain": retain}, WeightedLoss({"retain": 1.0})),
        ]
    both = Examples(
        torch.cat([relabelled.inputs, retain.inputs]),
        torch.cat([relabelled.targets, retain.targets]),
    )
    return [Phase("forget (random labels) and retain", {"both": both}, WeightedLoss({"both": 1.0}))]


@dataclass(frozen=True)
class RandomLabels:
    """Random labelling (RL): fit wrong labels on :math:`F` while keeping :math:`R` fitted.

    Attributes:
        loop: optimiser, epochs, batch size and schedule.
        batches: ``"separate"`` (a pass over F, then one over R, each epoch) or ``"mixed"`` (one
            shuffled pass over F and R together).
    """

    loop: LoopConfig = field(default_factory=LoopConfig)
    batches: Literal["separate", "mixed"] = "separate"
    requires_forget_set: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_batches(self.batches)

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        relabelled = relabelled_forget_set(model, split.forget, seed)
        phases = random_label_phases(relabelled, split.retain, self.batches)
        return unlearning_loop(model, phases, self.loop, mask=mask, seed=seed)
