"""MNIST-1D (Greydanus 2020), generated procedurally and offline by the ``mnist1d`` package."""

from __future__ import annotations

import random

import numpy as np
import torch

from tda.data.examples import Examples
from tda.data.splits import DataSplits


def _generate(total: int, seed: int) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = total
    args.train_split = 1.0  # all in "x": mnist1d's int(total * fraction) can miss n_train by one
    args.seed = seed
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:  # mnist1d seeds the global generators; restore them for the caller
        return make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def load_mnist1d(n_train: int = 4000, n_test: int = 1000, seed: int = 0) -> DataSplits:
    """MNIST-1D: 40-sample 1-D signals in 10 classes, generated from ``seed`` (no download).

    Args:
        n_train: training examples.
        n_test: test examples; ``n_train + n_test`` must be a multiple of 10 (classes are balanced).
        seed: generator seed; the same seed gives the same data set.
    """
    total = n_train + n_test
    if n_train < 1 or n_test < 1 or total % 10:
        raise ValueError(
            f"n_train={n_train} and n_test={n_test} must be positive with a sum divisible by 10"
        )
    data = _generate(total, seed)
    if len(data["y"]) != total:
        raise RuntimeError(f"mnist1d produced {len(data['y'])} examples, not {total}")
    train, test = (
        Examples(
            torch.tensor(data["x"][rows], dtype=torch.float32), torch.tensor(data["y"][rows]).long()
        )
        for rows in (slice(0, n_train), slice(n_train, total))
    )
    return DataSplits(train=train, test=test, num_classes=10)
