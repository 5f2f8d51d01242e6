r"""WAGLE (Jia et al. 2024): any unlearner run inside the weights that weight attribution picks.

The mask keeps the top fraction :math:`r` of weights by WAGLE's score at the original model (see
:mod:`unlearn.weight_attribution`), ranked among the weights the caller's mask lets change (all
weights without one: inside :class:`~unlearn.PruneThenUnlearn`, the kept ones, so pruned weights
never take a share of :math:`r`); the base unlearner (the paper's: GradDiff or NPO) then updates
only those weights, and every other weight stays bitwise unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from tda.task import ClassificationTask, Task
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit, UnlearningMethod
from unlearn.methods.gradient_difference import GradientDifference
from unlearn.weight_attribution import weight_attribution_mask


@dataclass(frozen=True)
class WAGLE:
    r"""Weight-attribution-guided unlearning.

    Attributes:
        base: the unlearner run inside the mask (default GradDiff).
        fraction: :math:`r`, the share of the weights the caller's mask lets change (all weights
            without one) that may change (the paper's masks: 0.8); 1 keeps exactly the mask.
        curvature: :math:`\mu > 0`, the diagonal-Hessian constant of the scores.
        task: supplies the loss whose gradients score the weights (default cross-entropy; give
            the base unlearner the same task).
    """

    base: UnlearningMethod = field(default_factory=GradientDifference)
    fraction: float = 0.8
    curvature: float = 1e-3
    task: Task = field(default_factory=ClassificationTask)
    requires_forget_set: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if not self.curvature > 0:  # NaN too
            raise ValueError(f"curvature must be positive, got {self.curvature}")

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        attributed = weight_attribution_mask(
            model,
            split.forget,
            split.retain,
            self.fraction,
            curvature=self.curvature,
            task=self.task,
            allowed=mask,
        )
        return self.base.unlearn(model, split, seed=seed, mask=attributed)  # inside ``mask``
