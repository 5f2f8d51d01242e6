"""scikit-learn's bundled handwritten digits (8x8 images, 1,797 examples, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch

from tda.data.examples import Examples
from tda.data.splits import DataSplits


def load_digits(
    test_fraction: float = 0.2, seed: int = 0, classes: tuple[int, ...] | None = None
) -> DataSplits:
    """Digits as flat 64-pixel inputs scaled to [0, 1], split at random by ``seed``.

    Args:
        test_fraction: share of the examples held out for testing.
        seed: seed of the split.
        classes: keep only these digits (relabelled 0..len-1 in ascending order), e.g. ``(1, 7)``
            for a binary task.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1) or leaving a split empty, or ``classes``
            that are not at least 2 distinct digits.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if classes is not None and (
        not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(10))
    ):
        raise ValueError(f"classes must be distinct digits 0-9, got {classes}")
    if classes is not None and len(classes) < 2:
        raise ValueError(
            f"classes={tuple(classes)} keep a single class: a classification task (its margins) "
            "needs at least 2 classes"
        )
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: sklearn imports slowly

    inputs, targets = sklearn_digits(return_X_y=True)
    if classes is not None:
        keep = np.isin(targets, classes)
        inputs, targets = inputs[keep], np.searchsorted(np.array(sorted(classes)), targets[keep])
    order = np.random.default_rng(seed).permutation(len(targets))
    n_test = int(round(test_fraction * len(targets)))
    if not 0 < n_test < len(targets):
        raise ValueError(
            f"test_fraction {test_fraction} of {len(targets)} examples leaves "
            f"{'no test' if n_test == 0 else 'no training'} examples"
        )
    test_index, train_index = order[:n_test], order[n_test:]
    x = torch.tensor(inputs / 16.0, dtype=torch.float32)
    y = torch.tensor(targets).long()
    num_classes = len(classes) if classes is not None else 10
    return DataSplits(
        train=Examples(x[train_index], y[train_index]),
        test=Examples(x[test_index], y[test_index]),
        num_classes=num_classes,
    )
