r"""SalUn's weight saliency mask (Fan et al. 2024): weights the forget loss is most sensitive to.

.. math:: g = \nabla_\theta \sum_{z \in F} \ell(z; \theta_o), \qquad
   M_j = \mathbb{1}\big[|g_j| \text{ is among the } \lceil r p \rceil \text{ largest } |g_k|\big]

over all :math:`p` weights of the model at once (a global ranking, not per layer), with
:math:`\theta_o` the model before unlearning. Gradients are taken in evaluation mode (no dropout).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.task import Task
from unlearn.gradients import summed_gradient


def top_fraction_mask(scores: dict[str, Tensor], fraction: float) -> dict[str, Tensor]:
    r"""``True`` for the :math:`\lceil r p \rceil` largest scores over all tensors together.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``, or a NaN score (``topk`` would rank it first).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the trainable fraction must be in (0, 1], got {fraction}")
    for name, score in scores.items():
        if bool(torch.isnan(score).any()):
            raise ValueError(f"the scores of {name!r} hold NaN; a NaN cannot be ranked")
    flat = torch.cat([score.detach().flatten() for score in scores.values()])
    keep = math.ceil(fraction * flat.numel() * (1 - 1e-12))  # 0.07 * 100 is 7.000000000000001
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, keep, sorted=False).indices] = True
    pieces = chosen.split([score.numel() for score in scores.values()])
    return {
        name: piece.view_as(score)
        for (name, score), piece in zip(scores.items(), pieces, strict=True)
    }


def saliency_mask(
    model: nn.Module, forget: Examples, fraction: float = 0.5, *, task: Task | None = None
) -> dict[str, Tensor]:
    """SalUn's mask: the top ``fraction`` of weights by forget-loss gradient magnitude.

    Args:
        model: the model before unlearning (not modified).
        forget: the forget set :math:`F`.
        fraction: :math:`r`, the share of all weights left trainable (SalUn's default 0.5).
        task: supplies :math:`\\ell` (default cross-entropy).
    """
    if len(forget) == 0:
        raise ValueError("a saliency mask needs a non-empty forget set")
    gradient = summed_gradient(model, forget, task=task)
    return top_fraction_mask({name: g.abs() for name, g in gradient.items()}, fraction)
