"""Small reference models used by experiments, benchmarks and tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from tda.describe import describe
from tda.device import seeded_rng

if TYPE_CHECKING:
    from tda.data.examples import Examples


class MLP(nn.Sequential):
    """Fully connected ReLU network, e.g. the MNIST-1D benchmark model 40-128-128-10."""

    def __init__(
        self, in_features: int = 40, hidden: Sequence[int] = (128, 128), num_classes: int = 10
    ) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN1d(nn.Module):
    """Small 1-D convolutional network for sequences ``[batch, length]`` (e.g. MNIST-1D)."""

    def __init__(
        self, length: int = 40, channels: int = 32, num_classes: int = 10, kernel_size: int = 5
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        reduced = length  # after each convolution: (length + 2 padding - kernel) // stride + 1
        for stride in (1, 2, 2):
            reduced = (reduced + 2 * padding - kernel_size) // stride + 1
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size, padding=padding),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size, stride=2, padding=padding),
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size, stride=2, padding=padding),
            nn.ReLU(),
        )
        self.head = nn.Linear(channels * reduced, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.features(x.unsqueeze(1))
        return self.head(hidden.flatten(1))


class LogisticRegression(nn.Linear):
    """Multinomial logistic regression: a single linear layer producing logits."""

    def __init__(self, in_features: int = 64, num_classes: int = 10) -> None:
        super().__init__(in_features, num_classes)


def build_model(factory: Callable[[], nn.Module], seed: int, dtype: torch.dtype = torch.float32):
    """Construct ``factory()`` with initial weights drawn from ``seed``; global RNGs untouched.

    Raises:
        TypeError: the factory gives its model a setting it does not take, named with every
            setting the factory holds (e.g. an experiment's ``model.hidden``, an MLP's, left in
            place under ``model=cnn1d``).
    """
    with seeded_rng(seed):
        try:
            model = factory()
        except TypeError as error:
            if "unexpected keyword argument" not in str(error):
                raise
            raise TypeError(
                f"{error}: the model factory holds a setting this model does not take (its "
                f"settings: {describe(factory)}); one meant for another model, e.g. an "
                "experiment's model.hidden (the MLP's) under model=cnn1d? Give this model's own "
                "settings"
            ) from error
    return model.to(dtype)


def model_dtype(data: Examples) -> torch.dtype:
    """The dtype to :func:`build_model` in for training on ``data``: that of floating inputs
    (a float32 model cannot take float64 inputs); float32, ``build_model``'s default, for integer
    inputs (token ids), as a module cannot be cast to an integer dtype."""
    dtype = data.inputs.dtype
    return dtype if dtype.is_floating_point else torch.float32
