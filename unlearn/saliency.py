r"""SalUn's weight saliency mask (Fan et al. 2024): weights the forget loss is most sensitive to.

.. math:: g = \nabla_\theta \sum_{z \in F} \ell(z; \theta_o), \qquad
   M_j = \mathbb{1}\big[|g_j| \text{ is among the } \lceil r p \rceil \text{ largest } |g_k|\big]

over the :math:`p` weights the caller's mask allows to change (all weights when there is no
mask; a global ranking, not per layer), with :math:`\theta_o` the model before unlearning. Weights
the mask freezes (e.g. pruned ones inside :class:`~unlearn.PruneThenUnlearn`) take no part in the
ranking, so :math:`r = 1` keeps exactly the mask. Gradients are taken in evaluation mode (no
dropout).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.task import Task
from unlearn.gradients import summed_gradient
from unlearn.masks import Mask


def top_fraction_mask(
    scores: dict[str, Tensor], fraction: float, *, allowed: Mask | None = None
) -> dict[str, Tensor]:
    r"""``True`` for the :math:`\lceil r p \rceil` largest scores over all tensors together.

    Args:
        scores: a score tensor per parameter name.
        fraction: :math:`r \in (0, 1]`.
        allowed: a mask (``True`` = may change; names it leaves out may change): only the
            :math:`p` weights it allows are ranked and can be kept. ``None``: all weights.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``, a NaN score (``topk`` would rank it first),
            or an ``allowed`` entry that has no scores, is not boolean or has another shape.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the trainable fraction must be in (0, 1], got {fraction}")
    for name, score in scores.items():
        if bool(torch.isnan(score).any()):
            raise ValueError(f"the scores of {name!r} hold NaN; a NaN cannot be ranked")
    flat = torch.cat([score.detach().flatten() for score in scores.values()])
    candidates = None if allowed is None else _allowed_positions(scores, allowed, flat.device)
    ranked = flat if candidates is None else flat[candidates]
    keep = math.ceil(fraction * ranked.numel() * (1 - 1e-12))  # 0.07 * 100 is 7.000000000000001
    top = torch.topk(ranked, keep, sorted=False).indices
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[top if candidates is None else candidates[top]] = True
    pieces = chosen.split([score.numel() for score in scores.values()])
    return {
        name: piece.view_as(score)
        for (name, score), piece in zip(scores.items(), pieces, strict=True)
    }


def _allowed_positions(scores: dict[str, Tensor], allowed: Mask, device: torch.device) -> Tensor:
    """Flat positions (in the order of ``scores``) of the weights ``allowed`` lets change."""
    unknown = sorted(set(allowed) - set(scores))
    if unknown:
        raise ValueError(f"the mask names {unknown[0]!r}, which has no scores")
    flags = []
    for name, score in scores.items():
        trainable = allowed.get(name, torch.ones_like(score, dtype=torch.bool))
        if not isinstance(trainable, Tensor) or trainable.dtype != torch.bool:
            raise ValueError(f"mask entry {name!r} must be a bool tensor")
        if trainable.shape != score.shape:
            raise ValueError(
                f"mask entry {name!r} has shape {tuple(trainable.shape)} but its scores have "
                f"shape {tuple(score.shape)}"
            )
        flags.append(trainable.to(device).flatten())
    return torch.cat(flags).nonzero().squeeze(1)


def saliency_mask(
    model: nn.Module,
    forget: Examples,
    fraction: float = 0.5,
    *,
    task: Task | None = None,
    allowed: Mask | None = None,
) -> dict[str, Tensor]:
    """SalUn's mask: the top ``fraction`` of weights by forget-loss gradient magnitude.

    Args:
        model: the model before unlearning (not modified).
        forget: the forget set :math:`F`.
        fraction: :math:`r`, the share of the weights ``allowed`` lets change (all weights
            without it) left trainable (SalUn's default 0.5).
        task: supplies :math:`\\ell` (default cross-entropy).
        allowed: the caller's mask; weights it freezes are not ranked and stay frozen.
    """
    if len(forget) == 0:
        raise ValueError("a saliency mask needs a non-empty forget set")
    gradient = summed_gradient(model, forget, task=task)
    magnitudes = {name: g.abs() for name, g in gradient.items()}
    return top_fraction_mask(magnitudes, fraction, allowed=allowed)
