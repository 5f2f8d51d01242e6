r"""Backdoor poisoning: plant a trigger to test a detector, and find the poisons by attribution.

A backdoor attacker writes a trigger pattern into a few training inputs and relabels them to a
target class; the trained model then predicts the target on any input carrying the trigger. The
poisons are the training examples that *make* it do so, which is what attribution measures: score
the attack queries (:meth:`Backdoor.attack`: clean test inputs of other classes with the trigger
written in, labelled with the target, so that the attributed output is the target's margin) and
take each training example's mean score, :func:`~tda.valuation.values_from_scores`. The highest
values are the suspects; :func:`~tda.valuation.mislabel_detection` reports how many poisons they
hold. Which attributor matters: a learnt poison has a tiny training loss, so methods that weigh
examples by their loss gradient (TRAK, influence functions, self-influence) all but ignore it,
while grad-cos (:class:`~tda.methods.GradientSimilarity` with ``normalize=True``) compares
gradient directions only and finds it (``benchmarks/bench_poison.py``: 90% of the poisons in the
top 1% on MNIST-1D, against near-random for the loss-weighted methods).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.outputs import logits_of


@dataclass(frozen=True)
class Backdoor:
    """A trigger written over the last positions of each input's last axis, and its target.

    Attributes:
        pattern: the trigger's values, written over the last ``len(pattern)`` positions.
        target: the class the trigger forces.
    """

    pattern: Sequence[float] = (4.0, -4.0, 4.0, -4.0)
    target: int = 0

    def __post_init__(self) -> None:
        if len(self.pattern) == 0:
            raise ValueError("the trigger pattern is empty")
        if self.target < 0:
            raise ValueError(f"target must be a class index >= 0, got {self.target}")

    def apply(self, inputs: Tensor) -> Tensor:
        """A copy of ``inputs`` with the trigger written in.

        Raises:
            ValueError: the inputs' last axis is shorter than the pattern.
        """
        width = len(self.pattern)
        if inputs.shape[-1] < width:
            raise ValueError(f"inputs of length {inputs.shape[-1]} cannot hold a {width}-trigger")
        triggered = inputs.clone()
        triggered[..., -width:] = torch.as_tensor(self.pattern, dtype=inputs.dtype)
        return triggered

    def plant(self, examples: Examples, fraction: float, seed: int) -> tuple[Examples, Tensor]:
        """Poison ``round(fraction * n)`` examples not of the target class, drawn with ``seed``:
        trigger written in, label set to the target. Returns the poisoned copy and the ``[n]``
        boolean mask of the poisons.

        Raises:
            ValueError: ``fraction`` outside (0, 1), or too few examples of other classes.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        count = round(fraction * len(examples))
        others = (examples.targets != self.target).nonzero().squeeze(1).cpu().numpy()
        if count < 1 or count > len(others):
            raise ValueError(
                f"cannot poison {count} of the {len(others)} examples outside class {self.target}"
            )
        chosen = np.random.default_rng(seed).choice(others, size=count, replace=False)
        index = torch.as_tensor(np.sort(chosen), device=examples.inputs.device)
        inputs, targets = examples.inputs.clone(), examples.targets.clone()
        inputs[index] = self.apply(inputs[index])
        targets[index] = self.target
        poisoned = torch.zeros(len(examples), dtype=torch.bool)
        poisoned[index.cpu()] = True
        return Examples(inputs, targets), poisoned

    def attack(self, examples: Examples) -> Examples:
        """The examples not of the target class, trigger written in, labelled with the target:
        the queries whose attributed output is the margin the attack pushes up.

        Raises:
            ValueError: every example is of the target class.
        """
        keep = examples.targets != self.target
        if not bool(keep.any()):
            raise ValueError(f"every example is of class {self.target}: nothing to attack")
        inputs = self.apply(examples.inputs[keep])
        return Examples(inputs, torch.full_like(examples.targets[keep], self.target))

    def success_rate(self, model: nn.Module, examples: Examples) -> float:
        """Fraction of :meth:`attack` queries the model assigns to the target class (evaluated
        in eval mode; the model's train/eval mode is restored)."""
        predicted = logits_of(model, self.attack(examples)).argmax(-1)
        return float((predicted == self.target).double().mean())
