"""The Attributor interface and the one place where checkpoints are ensembled.

Sign convention (the whole library): ``scores[q, i] > 0`` means training example ``i`` pushes the
output of query ``q`` up, i.e. removing ``i`` from training would lower it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from tda.indices import check_in_range, integer_positions
from tda.store import FeatureStore


class Attributor(Protocol):
    """Fit on training features in a store; score queries against the training set."""

    def fit(self, store: FeatureStore, *, split: str = "train", checkpoints=None) -> Attributor:
        """Prepare whatever the method needs from the training features (returns ``self``)."""
        ...

    def score(self, split: str, *, indices: Sequence[int] | None = None) -> Tensor:
        """Scores ``[n_query, n_train]`` of the queries in ``split`` (optionally some rows)."""
        ...


def resolve_checkpoints(store: FeatureStore, checkpoints: Sequence[str] | None) -> list[str]:
    """The checkpoints to ensemble: all in the store by default; unknown names are refused, and
    so is a name listed twice (it would weigh double in the mean)."""
    available = store.checkpoints()
    if checkpoints is None:
        checkpoints = available
    missing = [c for c in checkpoints if c not in available]
    if missing:
        raise ValueError(f"checkpoints {missing} are not in the store; it has {available}")
    repeated = next((c for i, c in enumerate(checkpoints) if c in checkpoints[:i]), None)
    if repeated is not None:
        raise ValueError(
            f"checkpoint {repeated!r} is listed more than once; each checkpoint is counted once "
            "in the ensemble mean"
        )
    if not checkpoints:
        raise ValueError(f"the store at {store.root} holds no checkpoints")
    return list(checkpoints)


def mean_over_checkpoints(score_one: Callable[[str], Tensor], checkpoints: Sequence[str]) -> Tensor:
    r"""Ensemble: :math:`\frac{1}{M}\sum_m s_m`, accumulated one checkpoint at a time.

    The tensors ``score_one`` returns are left as they are (the sum is accumulated in a copy).
    """
    total = None
    for checkpoint_id in checkpoints:
        scores = score_one(checkpoint_id)
        total = scores.clone() if total is None else total.add_(scores)
    return total / len(checkpoints)


def score_dtype(store: FeatureStore, checkpoint_id: str, split: str) -> torch.dtype:
    """float64 for scores of a store holding float64 features, float32 otherwise."""
    stored = store.shards(checkpoint_id, split)[0].arrays["features"][1]
    return torch.float64 if stored == np.dtype(np.float64).str else torch.float32


def query_rows(store: FeatureStore, checkpoint_id: str, split: str, indices) -> Tensor:
    """Query features ``[q, k]`` of ``split``, optionally only the rows at ``indices``.

    Raises:
        ValueError: ``indices`` are not one-dimensional integers, or one is out of range.
    """
    if indices is None:
        return torch.from_numpy(store.load(checkpoint_id, split))
    index = integer_positions(indices, "query indices")
    if index.ndim != 1:
        raise ValueError(f"query indices must be one-dimensional, got shape {list(index.shape)}")
    blocks = store.iter_rows(checkpoint_id, split)  # refuses an undeclared or incomplete split
    size = store.splits()[split]
    check_in_range(index, size, "query index", f"split '{split}'")
    return torch.from_numpy(gather_rows(blocks, index))


def gather_rows(blocks: Iterator[tuple[int, np.ndarray]], positions: np.ndarray) -> np.ndarray:
    """The rows at ``positions`` (``[m]``, in range; any order, repeats allowed) of a split read
    as ``(start, block)`` pairs (:meth:`FeatureStore.iter_rows`): ``[m, ...]``, holding only
    those rows and one block at a time, never the whole split."""
    rows = None
    for start, block in blocks:
        if rows is None:
            rows = np.empty((len(positions), *block.shape[1:]), dtype=block.dtype)
        wanted = np.flatnonzero((positions >= start) & (positions < start + len(block)))
        rows[wanted] = block[positions[wanted] - start]
    return rows


def train_product(store: FeatureStore, checkpoint_id: str, split: str, left: Tensor) -> Tensor:
    r"""``left @ Φᵀ`` (``[q, n]``) for training features :math:`\Phi`, streamed by shard."""
    n_train = store.splits()[split]
    result = torch.empty(left.shape[0], n_train, dtype=left.dtype)
    for start, block in store.iter_rows(checkpoint_id, split):
        block = torch.from_numpy(block).to(left.dtype)
        result[:, start : start + len(block)] = left @ block.T
    return result


def train_gram(
    store: FeatureStore, checkpoint_id: str, split: str, weights: Tensor | None = None
) -> Tensor:
    r""":math:`\Phi^\top\Phi`, or :math:`\Phi^\top W\Phi` for row ``weights`` ``[n]``
    (``[k, k]``, float64), accumulated shard by shard."""
    gram = None
    for start, block in store.iter_rows(checkpoint_id, split):
        block = torch.from_numpy(block).double()
        left = block if weights is None else block * weights[start : start + len(block), None]
        gram = left.T @ block if gram is None else gram.addmm_(left.T, block)
    return gram
