r"""How faithfully a surrogate reproduces a network on held-out data (Engel et al. 2023, Sec. 4.1).

Both sets of class scores are centred per example (:math:`s_c - \frac1C\sum_k s_k`), which removes
the softmax's free shift. Reported:

* ``kendall_tau``: Kendall's :math:`\tau_b` between network and surrogate scores; for two classes
  over the decision values :math:`s_1 - s_0` of the examples, for more over all
  (example, class) pairs pooled.
* ``kendall_tau_per_class``: the mean over classes of :math:`\tau_b` over examples of one class's
  centred score (equal to ``kendall_tau`` for two classes).
* ``agreement``: the fraction of examples where both pick the same arg-max class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import Tensor


@dataclass(frozen=True)
class FaithfulnessReport:
    """Faithfulness of a surrogate on ``n_examples`` held-out examples (see the module doc)."""

    kendall_tau: float
    kendall_tau_per_class: float
    agreement: float
    n_examples: int
    num_classes: int

    def as_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"Kendall tau {self.kendall_tau:.3f} (per class {self.kendall_tau_per_class:.3f}), "
            f"agreement {self.agreement:.3f} on {self.n_examples} examples"
        )


def faithfulness(network: Tensor, surrogate: Tensor) -> FaithfulnessReport:
    """Compare network logits and surrogate decision values, both ``[n, C]``.

    Raises:
        ValueError: mismatched shapes, fewer than 2 examples or classes, or non-finite values.
    """
    if network.shape != surrogate.shape or network.ndim != 2:
        raise ValueError(
            f"network {tuple(network.shape)} and surrogate {tuple(surrogate.shape)} scores must "
            "both be [n, C]"
        )
    n, classes = network.shape
    if n < 2 or classes < 2:
        raise ValueError(f"need at least 2 examples and 2 classes, got [{n}, {classes}]")
    first, second = _centred(network), _centred(surrogate)
    if not (np.isfinite(first).all() and np.isfinite(second).all()):
        raise ValueError("network or surrogate scores hold NaN or infinite values")
    if classes == 2:
        pooled = _tau(first[:, 1] - first[:, 0], second[:, 1] - second[:, 0])
    else:
        pooled = _tau(first.ravel(), second.ravel())
    per_class = float(np.nanmean([_tau(first[:, c], second[:, c]) for c in range(classes)]))
    agree = float((network.argmax(1) == surrogate.argmax(1)).to(torch.float64).mean())
    return FaithfulnessReport(pooled, per_class, agree, n, classes)


def _centred(scores: Tensor) -> np.ndarray:
    values = scores.detach().to(torch.float64).cpu().numpy()
    return values - values.mean(axis=1, keepdims=True)


def _tau(first: np.ndarray, second: np.ndarray) -> float:
    return float(kendalltau(first, second).statistic)
