r"""Tasks: what is attributed. Per-example functions of a model's logits and the example's target.

Every function takes the logits of one example (shape ``[C]``) and its target (a 0-dim integer
tensor) and returns a scalar, so ``torch.func.vmap`` can batch it. They also accept a leading batch
dimension (``[B, C]`` logits, ``[B]`` targets) and then return ``[B]``.
A target outside the classes ``0..C-1`` (other than a language model's ignored positions)
makes the value NaN, so the library's finite checks refuse it rather than use a wrong number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.nn import functional


class Task(Protocol):
    """The measurement attributed (``output``), the training loss, and TRAK's out-to-loss weight."""

    def output(self, logits: Tensor, target: Tensor) -> Tensor:
        """The attributed model output :math:`f(z;\\theta)`."""
        ...

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The training loss :math:`\\ell(z;\\theta)`."""
        ...

    def out_to_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """:math:`Q = -\\partial \\ell / \\partial f` at the example (TRAK's diagonal weight;
        ``1 - p`` for cross-entropy and the margin)."""
        ...


def _true_class_mask(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The one-hot mask of ``target`` over the classes, and a factor that is 1 where the target
    names a class and NaN where it does not.

    Multiplied into a value, the factor turns a target outside ``0..C-1`` into a NaN value and a
    NaN gradient, which training and the per-sample gradients refuse (naming the step or the
    example), instead of a plausible wrong number (a loss of ``logsumexp``, a :math:`Q` of 1).
    A data-dependent check cannot raise inside ``vmap``.
    """
    leading = tuple(logits.shape[:-1])  # targets may broadcast over extra leading axes
    trailing = leading[len(leading) - target.dim() :]  # e.g. [n] of logits [S, n, C]
    if target.dim() > len(leading) or trailing != tuple(target.shape):  # e.g. a [n, 1] column
        raise ValueError(
            f"targets of shape {tuple(target.shape)} do not fit logits of shape "
            f"{tuple(logits.shape)}: one class index per example is expected (a [n, 1] column "
            "must be flattened to [n])"
        )
    classes = torch.arange(logits.shape[-1], device=logits.device)
    mask = classes == target.unsqueeze(-1)
    valid = mask.any(-1)
    return mask, torch.where(valid, 1.0, float("nan")).to(logits.dtype)


@dataclass(frozen=True)
class ClassificationTask:
    r"""Multi-class classification with cross-entropy loss and the margin as output.

    ``output`` is the margin :math:`f = \text{logit}_y - \log\sum_{k \ne y} \exp \text{logit}_k`
    (equal to :math:`\log\frac{p_y}{1-p_y}`), ``loss`` the cross-entropy, and ``out_to_loss``
    :math:`Q = 1 - p_y`, since :math:`\ell = \log(1 + e^{-f})` gives
    :math:`-\partial\ell/\partial f = 1 - p_y`.
    """

    def output(self, logits: Tensor, target: Tensor) -> Tensor:
        mask, valid = _true_class_mask(logits, target)
        true_logit = (logits * mask).sum(-1)
        others = torch.logsumexp(logits.masked_fill(mask, float("-inf")), dim=-1)
        return (true_logit - others) * valid

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        mask, valid = _true_class_mask(logits, target)
        return (torch.logsumexp(logits, dim=-1) - (logits * mask).sum(-1)) * valid

    def out_to_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        mask, valid = _true_class_mask(logits, target)
        probability = (functional.softmax(logits, dim=-1) * mask).sum(-1)
        return (1.0 - probability) * valid


@dataclass(frozen=True)
class ClassLogit:
    r"""One class's logit as the attributed output, with cross-entropy as the loss.

    ``output`` is :math:`\text{logit}_c` for a fixed class :math:`c` (whatever the target), so
    per-class features predict whole logit vectors (datamodel matching); ``loss`` and
    ``out_to_loss`` are those of :class:`ClassificationTask`.
    """

    class_index: int

    def __post_init__(self) -> None:
        if self.class_index < 0:
            raise ValueError(f"class_index must be non-negative, got {self.class_index}")

    def output(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.class_index >= logits.shape[-1]:
            raise ValueError(
                f"class_index {self.class_index} is out of range for {logits.shape[-1]} logits"
            )
        return logits[..., self.class_index]

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return ClassificationTask().loss(logits, target)

    def out_to_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return ClassificationTask().out_to_loss(logits, target)


IGNORE_INDEX = -100
"""Target value of a position that no loss or output counts (padding, a prompt's tokens)."""


def outside_classes(targets: Tensor, classes: int, ignored: int | None = None) -> Tensor:
    """Mask of the ``targets`` that are no class index ``0..classes-1`` (fractional or NaN
    floats included), leaving ``ignored`` positions (e.g. :data:`IGNORE_INDEX`) out."""
    outside = (targets < 0) | (targets >= classes)
    if targets.is_floating_point():
        outside |= targets != targets.round()  # 0.5, NaN
    if ignored is not None:
        outside &= targets != ignored
    return outside


def _token_log_likelihoods(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """:math:`\\log p(y_t)` at every position (0 where ignored) and the mask of counted ones."""
    counted = target != IGNORE_INDEX
    mask, valid = _true_class_mask(logits, target.masked_fill(~counted, 0))
    log_likelihood = (logits * mask).sum(-1) - torch.logsumexp(logits, dim=-1)
    return log_likelihood * counted * valid, counted


@dataclass(frozen=True)
class LanguageModelingTask:
    r"""Next-token prediction over sequences: logits ``[T, V]``, targets ``[T]`` per example.

    ``output`` is the sequence's log-likelihood :math:`f = \sum_t \log p_\theta(y_t \mid y_{<t})`
    over the counted positions (targets other than :data:`IGNORE_INDEX`, e.g. only an answer's
    tokens), ``loss`` the mean token negative log-likelihood :math:`\ell = -f / T_c` over the
    :math:`T_c` counted positions, and so ``out_to_loss`` is :math:`Q = -\partial\ell/\partial f =
    1/T_c`. A sequence with no counted position has output, loss and :math:`Q` zero.
    """

    def output(self, logits: Tensor, target: Tensor) -> Tensor:
        log_likelihood, _ = _token_log_likelihoods(logits, target)
        return log_likelihood.sum(-1)

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        log_likelihood, counted = _token_log_likelihoods(logits, target)
        return -log_likelihood.sum(-1) / counted.sum(-1).clamp_min(1)

    def out_to_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        counted = (target != IGNORE_INDEX).sum(-1).to(logits.dtype)
        return torch.where(counted > 0, 1.0 / counted.clamp_min(1), 0.0)
