"""Training in stages, each on its own examples (pre-training on A, then fine-tuning on B, ...).

Checkpoint-based attributors (:class:`~tda.methods.source.Source`,
:class:`~tda.methods.tracin.TracIn`) take a :class:`TrainingStage` per stage in ``fit_stages``,
so that each checkpoint's gradient terms cover only the examples its stage trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tda.checkpoints import Checkpoint
from tda.data.examples import Examples


@dataclass(frozen=True)
class TrainingStage:
    """One stage of a multi-stage training run (e.g. pre-training, then fine-tuning).

    Attributes:
        checkpoints: the stage's own checkpoints in training order, as its trainer saved them
            (a first step-0 checkpoint of its starting parameters is allowed, not needed).
        examples: indices into the full training set of the examples the stage trained on
            (default: all of them).
    """

    checkpoints: Sequence[Checkpoint]
    examples: Sequence[int] | np.ndarray | Tensor | None = None


def stage_indices(examples, n_train: int) -> Tensor | None:
    """A stage's example indices as a LongTensor (``None``: every example), validated.

    Raises:
        ValueError: not one-dimensional integers, empty, out of ``[0, n_train)``, or repeated.
    """
    if examples is None:
        return None
    indices = (
        examples.cpu()
        if isinstance(examples, torch.Tensor)
        else torch.as_tensor(np.asarray(examples))
    )
    if indices.numel() == 0:
        raise ValueError("a stage trained on no examples: give it at least one")
    if (
        indices.dim() != 1
        or indices.dtype.is_floating_point
        or indices.dtype.is_complex
        or indices.dtype == torch.bool
    ):
        raise ValueError(
            f"a stage's examples must be 1-D integer indices, got {indices.dtype} of shape "
            f"{tuple(indices.shape)}"
        )
    # torch has no min or max for uint16/32/64 (numpy's uint32 indices failed in them)
    unsigned = indices.dtype in (torch.uint16, torch.uint32, torch.uint64)
    values = indices.numpy() if unsigned else indices
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= n_train:
        raise ValueError(
            f"a stage's examples must index the training set [0, {n_train}), got {low}..{high}"
        )
    if len(torch.unique(indices)) != len(indices):
        raise ValueError("a stage lists some training examples more than once")
    return indices.long()


def stage_subset(train: Examples, indices: Tensor | None) -> Examples:
    """The stage's examples of ``train`` (all of them for ``None``)."""
    return train if indices is None else train.subset(indices)


def scatter_columns(total: Tensor | None, scores: Tensor, indices: Tensor | None, n: int) -> Tensor:
    """``total`` (``[q, n]``, zeros if ``None``) plus ``scores`` (``[q, |stage|]``) in the
    stage's columns."""
    if total is None:
        total = scores.new_zeros(len(scores), n)
    if indices is None:
        return total.add_(scores)
    return total.index_add_(1, indices.to(total.device), scores)
