r"""SalUn (Fan et al. 2024): random-label unlearning restricted to the most salient weights.

A saliency mask keeps the top fraction :math:`r` of weights by :math:`|\nabla_\theta \mathcal{L}_F|`
at the original model (see :mod:`unlearn.saliency`), ranked among the weights the caller's mask
lets change (all weights without one: inside :class:`~unlearn.PruneThenUnlearn`, the kept ones,
so pruned weights never take a share of :math:`r`); then, each epoch, a pass over :math:`F` with
random wrong labels and a pass over :math:`R` with true labels (or one pass over both, shuffled
together: ``batches="mixed"``) update only those weights. Every other weight stays bitwise
unchanged, under momentum and weight decay too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from torch import nn

from unlearn.loop import LoopConfig
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit
from unlearn.methods.random_labels import RandomLabels, check_batches
from unlearn.saliency import saliency_mask


@dataclass(frozen=True)
class SalUn:
    """Saliency unlearning.

    Attributes:
        loop: optimiser, epochs, batch size and schedule (reference: SGD momentum 0.9, 10 epochs).
        fraction: :math:`r`, the share of the weights the caller's mask lets change (all weights
            without one) that may change (reference 0.5); 1 keeps exactly the caller's mask.
        batches: how F's and R's batches meet, as in :class:`~unlearn.RandomLabels`.
    """

    loop: LoopConfig = field(default_factory=LoopConfig)
    fraction: float = 0.5
    batches: Literal["separate", "mixed"] = "separate"
    requires_forget_set: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        check_batches(self.batches)

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        salient = saliency_mask(model, split.forget, self.fraction, allowed=mask)  # inside mask
        return RandomLabels(self.loop, self.batches).unlearn(model, split, seed=seed, mask=salient)
