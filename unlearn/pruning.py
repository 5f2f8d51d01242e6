r"""Global magnitude pruning as masks (Jia et al. 2023, "Model Sparsity Can Simplify Unlearning").

A pruning mask is a :data:`~unlearn.masks.Mask` with ``True`` = *kept*. The same dictionary is the
unlearning loop's mask (``True`` = may change), so a pruned model unlearned inside its pruning
mask keeps every pruned weight exactly zero.

One-shot magnitude pruning (OMP) to sparsity :math:`s` keeps the :math:`p - \mathrm{round}(s p)`
largest :math:`|\theta_j|` over all :math:`p` prunable weights at once (a global ranking, not per
layer) and sets the others to zero. Iterative magnitude pruning (IMP) reaches :math:`s` in
:math:`K` rounds; round :math:`k` prunes to :math:`s_k = 1 - (1 - s)^{k/K}` (the same fraction of
the surviving weights each round), then retrains the kept weights with the mask fixed.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.task import ClassificationTask, Task
from unlearn.loop import LoopConfig, Phase, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask, check_mask, intersect_masks

_SEEDS = 2**64  # seeds lie in [0, 2**64), the range both torch and numpy seed from


def prunable_parameters(model: nn.Module) -> list[str]:
    """Names of the weight matrices and kernels (``ndim >= 2``); biases and norms are kept."""
    return [name for name, parameter in model.named_parameters() if parameter.dim() >= 2]


def mask_sparsity(mask: Mask) -> float:
    """Fraction of the weights a mask names that are pruned (``False``)."""
    total = sum(entry.numel() for entry in mask.values())
    if total == 0:
        raise ValueError("the mask names no weights")
    return 1.0 - sum(int(entry.sum()) for entry in mask.values()) / total


def magnitude_mask(
    model: nn.Module,
    sparsity: float,
    *,
    names: Sequence[str] | None = None,
    keep: Mask | None = None,
    protected: Mask | None = None,
) -> dict[str, Tensor]:
    r"""Global magnitude pruning mask: ``True`` for the largest :math:`|\theta_j|`, over all names.

    Exactly :math:`\mathrm{round}(s\,p)` of the :math:`p` weights named are pruned; ties are broken
    by position, deterministically.

    Args:
        model: the model whose weights are ranked (not modified).
        sparsity: :math:`s \in [0, 1)`, the fraction of the named weights to prune.
        names: parameters to prune (default :func:`prunable_parameters`).
        keep: an earlier pruning mask; its pruned weights stay pruned (IMP).
        protected: ``True`` = may not be pruned (e.g. weights a caller's mask freezes).

    Raises:
        ValueError: ``sparsity`` outside ``[0, 1)``, an unknown name, or a target that would prune
            fewer weights than ``keep`` already has or more than ``protected`` allows.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    names = list(names) if names is not None else prunable_parameters(model)
    parameters = dict(model.named_parameters())
    unknown = [name for name in names if name not in parameters]
    if unknown or not names:
        raise ValueError(f"cannot prune {unknown or 'no parameters'}: not parameters of the model")
    keep = check_mask(model, keep) if keep is not None else {}
    protected = check_mask(model, protected) if protected is not None else {}
    scores = []
    for name in names:
        score = parameters[name].detach().abs().flatten().double()
        if name in keep:  # already pruned: first in line
            score = torch.where(keep[name].flatten(), score, torch.full_like(score, -1.0))
        if name in protected:  # never pruned: last in line
            score = torch.where(protected[name].flatten(), torch.inf, score)
        scores.append(score)
    flat = torch.cat(scores)
    pruned = round(sparsity * flat.numel())
    _check_count(pruned, int((flat < 0).sum()), int(torch.isinf(flat).sum()), flat.numel())
    kept = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    kept[torch.sort(flat, stable=True).indices[:pruned]] = False
    pieces = kept.split([score.numel() for score in scores])
    return {
        name: piece.view(parameters[name].shape) for name, piece in zip(names, pieces, strict=True)
    }


def _check_count(pruned: int, already: int, protected: int, total: int) -> None:
    if pruned < already:
        raise ValueError(f"the target prunes {pruned} weights but {already} are already pruned")
    if pruned > total - protected:
        raise ValueError(
            f"the target prunes {pruned} of {total} weights but {protected} are protected"
        )


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> nn.Module:
    """Set every pruned weight (``False``) of ``model`` to ``+0.0`` in place; returns ``model``."""
    for name, kept in check_mask(model, mask).items():
        model.get_parameter(name).masked_fill_(~kept, 0.0)
    return model


@dataclass(frozen=True)
class MagnitudePruning:
    """Global magnitude pruning, one-shot (``rounds=1``, OMP) or iterative (IMP).

    Attributes:
        sparsity: the fraction of prunable weights set to zero at the end.
        rounds: :math:`K`; round :math:`k` prunes to :math:`1 - (1 - s)^{k/K}`.
        retrain: if given, after each round the kept weights are trained on the data passed to
            :meth:`prune` with the mask fixed (pruned weights stay exactly zero).
        names: parameters to prune (default: every weight with ``ndim >= 2``).
        task: the loss retraining minimises (default cross-entropy; a language model's token NLL
            with :class:`~tda.task.LanguageModelingTask`).
    """

    sparsity: float = 0.5
    rounds: int = 1
    retrain: LoopConfig | None = None
    names: tuple[str, ...] | None = None
    task: Task = field(default_factory=ClassificationTask)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        rounds = self.rounds
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be at least 1 and an integer, got {rounds!r}")

    def schedule(self) -> list[float]:
        r"""Sparsity after each round, :math:`s_k = 1 - (1 - s)^{k/K}` (the last is exactly s)."""
        steps = [1.0 - (1.0 - self.sparsity) ** (k / self.rounds) for k in range(1, self.rounds)]
        return [*steps, self.sparsity]

    def prune(
        self,
        model: nn.Module,
        data: Examples | None = None,
        *,
        seed: int = 0,
        mask: Mask | None = None,
    ) -> dict[str, Tensor]:
        """Prune ``model`` in place and return its pruning mask (``True`` = kept).

        Args:
            model: the model to prune (and retrain, if :attr:`retrain` is set).
            data: what retraining fits (required when :attr:`retrain` is set).
            seed: seed of the retraining loop, in ``[0, 2**64)``; round ``k`` uses
                ``(seed + k) mod 2**64``.
            mask: a loop mask (``True`` = may change); the weights it freezes are neither pruned
                nor moved by retraining.

        Raises:
            ValueError: before anything is pruned, retraining without data or a seed outside
                ``[0, 2**64)``.
        """
        if self.retrain is not None and (data is None or len(data) == 0):
            raise ValueError("retraining between pruning rounds needs non-empty data")
        seed = operator.index(seed)
        if not 0 <= seed < _SEEDS:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        frozen = {name: ~m for name, m in check_mask(model, mask).items()} if mask else None
        kept: dict[str, Tensor] | None = None
        for round_index, target in enumerate(self.schedule()):
            kept = magnitude_mask(model, target, names=self.names, keep=kept, protected=frozen)
            apply_mask(model, kept)
            if self.retrain is not None:
                loss = WeightedLoss({"retain": 1.0}, self.task)
                phase = Phase("retrain (pruned)", {"retain": data}, loss)
                trainable = intersect_masks(kept, mask)
                round_seed = (seed + round_index) % _SEEDS  # a valid seed near 2**64 wraps around
                unlearning_loop(model, [phase], self.retrain, mask=trainable, seed=round_seed)
        return kept
