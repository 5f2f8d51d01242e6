r"""NPO: negative preference optimisation (Zhang et al. 2024), with a retain term.

.. math:: \min_\theta \; -\frac{2}{\beta}\,\frac{1}{|B_F|}\sum_{z\in B_F}
   \log\sigma\big(\beta\,(\ell(z;\theta) - \ell(z;\theta_o))\big)
   + \gamma \, \frac{1}{|B_R|}\sum_{z\in B_R}\ell(z;\theta)

with :math:`\ell` the negative log-likelihood and :math:`\theta_o` the model before unlearning (the
reference). In the paper's notation the forget term is
:math:`-\frac{2}{\beta}\log\sigma(-\beta\log\frac{\pi_\theta}{\pi_{\text{ref}}})`, and
:math:`-\log\frac{\pi_\theta}{\pi_{\text{ref}}} = \ell(z;\theta) - \ell(z;\theta_o)`.
Its gradient is gradient ascent with a per-example weight that fades as the example is forgotten:

.. math:: \nabla_\theta = -\frac{1}{|B_F|}\sum_{z\in B_F} 2\sigma\big(-\beta\,(\ell(z;\theta)
   - \ell(z;\theta_o))\big)\,\nabla_\theta \ell(z;\theta) + \gamma\,\nabla_\theta\mathcal{L}_R,

so the first step equals GradDiff's and, as :math:`\beta \to 0`, NPO becomes GradDiff. The
reference's losses come from a frozen copy in evaluation mode.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional

from tda.data.examples import Examples
from tda.task import ClassificationTask, Task
from unlearn.loop import LoopConfig, Phase, Progress, unlearning_loop
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit, ascent_loop, check_non_negative_finite


@dataclass(frozen=True, eq=False)
class NPOLoss:
    r"""NPO's forget term on ``batches["forget"]`` plus :math:`\gamma` times the retain loss.

    Attributes:
        reference: the frozen model :math:`\theta_o`.
        beta: :math:`\beta > 0`; retain_weight: :math:`\gamma \ge 0`.
        task: supplies :math:`\ell` (default cross-entropy).
    """

    reference: nn.Module
    beta: float
    retain_weight: float
    task: Task = field(default_factory=ClassificationTask)

    def forget_term(self, model: nn.Module, forget: Examples) -> Tensor:
        """The mean NPO loss over the forget batch."""
        loss = self.task.loss(model(forget.inputs), forget.targets)
        with torch.no_grad():
            reference_loss = self.task.loss(self.reference(forget.inputs), forget.targets)
        log_sigmoid = functional.logsigmoid(self.beta * (loss - reference_loss))
        return -(2.0 / self.beta) * log_sigmoid.mean()

    def __call__(self, model: nn.Module, batches: Mapping[str, Examples], progress: Progress):
        retain = batches["retain"]
        fit = self.task.loss(model(retain.inputs), retain.targets).mean()
        return self.forget_term(model, batches["forget"]) + self.retain_weight * fit


@dataclass(frozen=True)
class NegativePreferenceOptimization:
    r"""NPO with a retain term: one forget batch and one retain batch per step.

    Attributes:
        loop: optimiser, epochs, batch size and schedule (a pass over :math:`F` is an epoch).
        beta: :math:`\beta > 0` (reference 0.1).
        retain_weight: :math:`\gamma \ge 0`.
        task: supplies :math:`\ell` (default cross-entropy; with
            :class:`~tda.task.LanguageModelingTask` a sequence's mean token NLL).
    """

    loop: LoopConfig = field(default_factory=partial(ascent_loop, epochs=10))
    beta: float = 0.1
    retain_weight: float = 1.0
    task: Task = field(default_factory=ClassificationTask)
    requires_forget_set: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0 < self.beta < math.inf:  # NaN too: it read as a diverged run
            raise ValueError(f"beta must be positive and finite, got {self.beta}")
        check_non_negative_finite("retain_weight", self.retain_weight)

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        loss = NPOLoss(reference, self.beta, self.retain_weight, self.task)
        sources = {"forget": split.forget, "retain": split.retain}
        phase = Phase("npo and retain", sources, loss, lead="forget")
        return unlearning_loop(model, [phase], self.loop, mask=mask, seed=seed)
