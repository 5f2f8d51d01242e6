r"""Mislabel detection: inspect training examples in order of suspicion, count the wrong labels.

Given a suspicion score per training example (self-influence, or minus a value) and which labels
are actually wrong, ``found_at[f]`` is the fraction of all wrong labels among the
:math:`\lceil f n \rceil` most suspicious examples (recall after inspecting a fraction ``f`` of the
data; Koh & Liang 2017, Sec. 5.4; Grosse et al. 2023 report it for EK-FAC self-influence), and
``auc`` the area under the ROC curve of suspicion as a detector (0.5: chance, 1: every wrong label
ranked above every correct one), computed as the Mann-Whitney statistic with ties counted half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from tda.data.examples import Examples


@dataclass(frozen=True)
class MislabelReport:
    """How well a suspicion ranking finds ``n_flipped`` wrong labels among ``n_train``.

    Attributes:
        found_at: inspected fraction -> fraction of the wrong labels found there.
        auc: ROC AUC of the suspicion score as a detector of wrong labels.
        recall_curve: ``[n_train]`` fraction found after inspecting the first ``j + 1``.
    """

    found_at: dict[float, float]
    auc: float
    n_flipped: int
    n_train: int
    recall_curve: np.ndarray

    def as_dict(self) -> dict:
        """JSON-able summary (the recall curve is left out)."""
        found = {f"{fraction:g}": value for fraction, value in self.found_at.items()}
        return {
            "found_at": found,
            "auc": self.auc,
            "n_flipped": self.n_flipped,
            "n_train": self.n_train,
        }

    def __str__(self) -> str:
        found = ", ".join(f"{100 * f:g}%: {100 * v:.1f}%" for f, v in self.found_at.items())
        return f"wrong labels found [{found}], AUC {self.auc:.3f} ({self.n_flipped} flipped)"


def flip_labels(
    data: Examples, fraction: float, num_classes: int, seed: int = 0
) -> tuple[Examples, Tensor]:
    """Give ``round(fraction * n)`` examples, chosen at random, a different random class.

    Returns:
        The examples with flipped labels, and the boolean mask ``[n]`` of flipped examples.

    Raises:
        ValueError: a fraction outside [0, 1], fewer than 2 classes, targets that are not one
            class per example (``[n]``), or a target outside ``0..num_classes-1`` (the modulo
            would silently turn it into a class).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if num_classes < 2:
        raise ValueError(f"flipping labels needs at least 2 classes, got {num_classes}")
    if data.targets.dim() != 1:
        raise ValueError(
            "flipping labels takes one class target per example, shape [n]; got targets of shape "
            f"{tuple(data.targets.shape)}"
        )
    outside = ((data.targets < 0) | (data.targets >= num_classes)).nonzero()
    if len(outside):
        row = int(outside[0])
        raise ValueError(
            f"target {int(data.targets[row])} of example {row} is outside the {num_classes} classes"
        )
    generator = torch.Generator().manual_seed(seed)
    count = round(fraction * len(data))
    chosen = torch.randperm(len(data), generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)  # never 0: a new class
    targets = data.targets.clone()
    targets[chosen] = (targets[chosen].cpu() + shift).remainder(num_classes).to(targets.device)
    flipped = torch.zeros(len(data), dtype=torch.bool)
    flipped[chosen] = True
    return Examples(data.inputs, targets), flipped


def mislabel_detection(
    suspicion: Tensor | np.ndarray,
    flipped: Tensor | np.ndarray,
    fractions: Sequence[float] = (0.1, 0.2),
) -> MislabelReport:
    """Rank by ``suspicion`` (highest first) and report recall at ``fractions`` and the AUC.

    Ties in suspicion are broken by index (stable sort), so the report is deterministic.

    Raises:
        ValueError: mismatched lengths, a ``flipped`` holding values other than 0 and 1,
            non-finite suspicion, no flipped or no clean example, or a fraction outside (0, 1].
    """
    scores = np.asarray(torch.as_tensor(suspicion).cpu(), dtype=np.float64)
    wrong = np.asarray(torch.as_tensor(flipped).cpu())
    if wrong.dtype != np.bool_ and not np.isin(wrong, (0, 1)).all():
        raise ValueError("flipped must be a boolean mask or hold only 0 and 1 (not positions)")
    wrong = wrong.astype(bool)
    if scores.ndim != 1 or scores.shape != wrong.shape:
        raise ValueError(f"suspicion {scores.shape} and flipped {wrong.shape} must both be [n]")
    if not np.isfinite(scores).all():
        raise ValueError("suspicion scores hold NaN or infinite values")
    n_wrong = int(wrong.sum())
    if n_wrong == 0 or n_wrong == len(wrong):
        raise ValueError(f"need both flipped and clean examples, got {n_wrong} of {len(wrong)}")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"fractions {bad} are outside (0, 1]")
    order = np.argsort(-scores, kind="stable")
    curve = np.cumsum(wrong[order]) / n_wrong
    found = {float(f): float(curve[_inspected_count(f, len(scores)) - 1]) for f in fractions}
    return MislabelReport(found, _auc(scores, wrong), n_wrong, len(scores), curve)


def _inspected_count(fraction: float, n_train: int) -> int:
    r""":math:`\lceil f n \rceil`, robust to the rounding of ``f`` (0.07 * 100 inspects 7); at
    least one example for any ``f > 0``."""
    return max(1, math.ceil(fraction * n_train - 1e-9))


def _auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos n_neg): probability a positive outranks a negative (ties 1/2)."""
    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
