"""Random training subsets for datamodels and LDS ground truth (Ilyas et al. 2022, Section 2)."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from tda.arguments import check_open_unit


def sample_subsets(n_train: int, alpha: float, count: int, seed: int) -> np.ndarray:
    r"""Draws ``count`` independent random subsets of a training set, each of ``round(alpha n)``.

    Row ``j`` is the indicator of subset :math:`S_j \subset S` with
    :math:`|S_j| = \mathrm{round}(\alpha n)` (Python's ``round``: halves go to the even integer),
    drawn uniformly without replacement and independently of the other rows.
    The same ``seed`` gives the same masks, bit for bit.

    Args:
        n_train: Size ``n`` of the training set (at least 2).
        alpha: Fraction of the training set kept in each subset, strictly between 0 and 1.
        count: Number ``m`` of subsets (at least 1).
        seed: Seed of the ``numpy.random.default_rng`` generator.

    Returns:
        Boolean masks of shape ``[count, n_train]``; every row has exactly
        ``round(alpha * n_train)`` True entries.

    Raises:
        ValueError: If an argument is out of range, or ``alpha`` rounds to an empty or full subset.
    """
    size = _subset_size(n_train, alpha, count)
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, n_train), dtype=bool)
    for row in masks:
        row[rng.choice(n_train, size=size, replace=False)] = True
    return masks


def _subset_size(n_train: int, alpha: float, count: int) -> int:
    """Validates the arguments of :func:`sample_subsets` and returns the subset size."""
    if not isinstance(n_train, Integral) or n_train < 2:
        raise ValueError(f"n_train must be an integer of at least 2, got {n_train!r}")
    if not isinstance(count, Integral) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    check_open_unit("alpha", alpha)
    size = round(alpha * n_train)
    if size == 0 or size == n_train:
        raise ValueError(
            f"alpha={alpha} of n_train={n_train} rounds to subsets of {size} examples; "
            "each subset must hold at least one example and leave at least one out"
        )
    return size
