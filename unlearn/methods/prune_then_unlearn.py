r"""Prune first, then unlearn (Jia et al. 2023): any unlearner run on a magnitude-pruned model.

The original :math:`\theta_o` is pruned by global magnitude (:class:`~unlearn.MagnitudePruning`,
one-shot or iterative), optionally retrained with the pruning mask fixed, and the inner method then
unlearns inside the same mask, so every pruned weight stays exactly ``+0.0`` throughout (momentum
and weight decay included). Retraining here fits the retain set :math:`R` only: the request has
already arrived, and refitting :math:`F` would undo it. It minimises the pruning's ``task``, which
must be the inner method's where that has one (a language model gives both
:class:`~tda.task.LanguageModelingTask`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from unlearn.masks import Mask, intersect_masks
from unlearn.methods.base import ForgetSplit, UnlearningMethod
from unlearn.pruning import MagnitudePruning


@dataclass(frozen=True)
class PruneThenUnlearn:
    """Magnitude pruning followed by an unlearner restricted to the kept weights.

    Attributes:
        pruning: how to prune (sparsity, rounds, optional retraining on :math:`R` with its task).
        method: the unlearner run inside the pruning mask (e.g. ``FineTune()``); it must accept a
            mask (exact retraining does not).

    Raises:
        ValueError: the pruning retrains with another ``task`` than the inner method's.
    """

    pruning: MagnitudePruning
    method: UnlearningMethod

    def __post_init__(self) -> None:
        task = getattr(self.method, "task", None)  # methods that take a task have this field
        if self.pruning.retrain is not None and task is not None and task != self.pruning.task:
            raise ValueError(
                f"the pruning retrains with task {self.pruning.task!r} but the method unlearns "
                f"with {task!r}; give both the same task"
            )

    @property
    def requires_forget_set(self) -> bool:
        """As the inner method."""
        return self.method.requires_forget_set

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        kept = self.pruning.prune(model, split.retain, seed=seed, mask=mask)
        inside = intersect_masks(kept, mask)
        return self.method.unlearn(model, split, seed=seed, mask=inside)
