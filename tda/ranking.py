"""Reading a score matrix: the most helpful and most harmful training examples per query.

Every ranking breaks ties to the lower index (a stable sort), as :func:`tda.eval.plan_removals`
and :func:`tda.valuation.mislabel_detection` do; ``Tensor.topk`` leaves the order of ties to the
implementation, which may differ between CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class TopExamples:
    """For each query, training indices ``[q, k]`` and their scores, most extreme first."""

    helpful: Tensor
    helpful_scores: Tensor
    harmful: Tensor
    harmful_scores: Tensor


def top_examples(scores: Tensor | np.ndarray, k: int = 5, chunk_size: int = 1024) -> TopExamples:
    """The ``k`` highest-scored (helpful) and lowest-scored (harmful) training examples per query.

    Ties go to the lower index. Processes ``chunk_size`` queries at a time, so a memory-mapped
    score matrix (:func:`tda.scores.open_scores`) is never read whole.

    Raises:
        ValueError: ``scores`` is not a non-empty ``[n_query, n_train]`` matrix, ``k`` is not in
            ``[1, n_train]``, ``chunk_size`` is below 1, or a score is NaN (a sort would rank it
            first).
    """
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be [n_query >= 1, n_train], got {list(scores.shape)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, {scores.shape[1]}], got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    parts = []
    for start in range(0, scores.shape[0], chunk_size):
        block = scores[start : start + chunk_size]
        block = block if isinstance(block, Tensor) else torch.from_numpy(np.array(block))
        _check_not_nan(block, start)
        helpful, harmful = top_indices(block, k), top_indices(block, k, largest=False)
        parts.append((helpful, block.gather(1, helpful), harmful, block.gather(1, harmful)))
    return TopExamples(*(torch.cat(column) for column in zip(*parts, strict=True)))


def top_indices(values: Tensor, k: int, *, largest: bool = True) -> Tensor:
    """Indices of the ``k`` largest (or smallest) entries along the last dimension, most extreme
    first, ties to the lower index: ``[..., k]``."""
    return values.sort(dim=-1, descending=largest, stable=True).indices[..., :k]


def _check_not_nan(block: Tensor, start: int) -> None:
    nan_rows = block.isnan().any(dim=1)
    if bool(nan_rows.any()):
        query = start + int(nan_rows.nonzero()[0, 0])
        raise ValueError(f"the scores of query {query} contain NaN; they cannot be ranked")
