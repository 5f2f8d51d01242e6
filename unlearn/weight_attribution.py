r"""WAGLE's weight attribution (Jia et al. 2024): weights whose change moves the forget loss most,
given that the retain loss is refit around them.

.. math:: S_j = \Big|\Big(\theta_j - \frac{g_{R,j}}{\mu}\Big)\, g_{F,j}\Big|, \qquad
   M_j = \mathbb{1}\big[S_j \text{ is among the } \lceil r p \rceil \text{ largest scores}\big]

with :math:`g_F, g_R` the loss gradients summed over the forget and retain sets at the model
before unlearning, :math:`\mu` a diagonal-Hessian constant standing in for the retain loss's
curvature (the paper's range is 1e-6 to 1e-3), and the ranking global over the :math:`p` weights
the caller's mask allows to change (all weights without one; frozen, e.g. pruned, weights are not
ranked, so :math:`r = 1` keeps exactly the mask).
Our reading: :math:`\theta' = \theta - g_R/\mu` is one Newton step on the retain loss with a
diagonal Hessian :math:`\mu I`, and :math:`|\theta'_j g_{F,j}|` is the first-order change of the
forget loss when weight :math:`j` of that refit model is set to zero.
"""

from __future__ import annotations

from torch import Tensor, nn

from tda.data.examples import Examples
from tda.task import Task
from unlearn.gradients import summed_gradient
from unlearn.masks import Mask
from unlearn.saliency import top_fraction_mask


def weight_attribution(
    model: nn.Module,
    forget: Examples,
    retain: Examples,
    *,
    curvature: float = 1e-3,
    task: Task | None = None,
) -> dict[str, Tensor]:
    r"""WAGLE's scores :math:`S_j` for every weight, by parameter name.

    Args:
        model: the model before unlearning (not modified).
        forget: :math:`F`; retain: :math:`R`; both non-empty.
        curvature: :math:`\mu > 0`.
        task: supplies :math:`\ell` (default cross-entropy).

    Raises:
        ValueError: an empty set or a non-positive ``curvature``.
    """
    if not curvature > 0:  # NaN too: every score would be NaN and the mask arbitrary
        raise ValueError(f"the curvature constant mu must be positive, got {curvature}")
    if len(forget) == 0 or len(retain) == 0:
        raise ValueError("weight attribution needs a non-empty forget set and retain set")
    forget_gradient = summed_gradient(model, forget, task=task)
    retain_gradient = summed_gradient(model, retain, task=task)
    return {
        name: ((p.detach() - retain_gradient[name] / curvature) * forget_gradient[name]).abs()
        for name, p in model.named_parameters()
    }


def weight_attribution_mask(
    model: nn.Module,
    forget: Examples,
    retain: Examples,
    fraction: float = 0.8,
    *,
    curvature: float = 1e-3,
    task: Task | None = None,
    allowed: Mask | None = None,
) -> dict[str, Tensor]:
    """WAGLE's mask: the top ``fraction`` of weights by :func:`weight_attribution` (the paper's
    released masks keep 80% trainable), ranked among the weights ``allowed`` lets change (all
    weights without it; see :func:`~unlearn.top_fraction_mask`)."""
    scores = weight_attribution(model, forget, retain, curvature=curvature, task=task)
    return top_fraction_mask(scores, fraction, allowed=allowed)
