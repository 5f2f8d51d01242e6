"""Shared fixtures: tiny float64 problems whose exact answers are cheap to compute."""

import pytest
import torch

from tda.data import Examples
from tda.models import MLP, build_model


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests run on 2 cores beside each other; one intra-op thread keeps them predictable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_mlp() -> torch.nn.Module:
    """A 6-8-3 float64 MLP (83 parameters)."""
    return build_model(lambda: MLP(6, (8,), 3), seed=0, dtype=torch.float64)


class TiedLayers(torch.nn.Module):
    """6 -> 3 -> tanh -> 3 -> tanh -> 3 logits, the two 3 x 3 layers sharing one weight (as an
    embedding and an output head can): 27 parameters, the shared weight used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(6, 3)
        self.middle = torch.nn.Linear(3, 3, bias=False)
        self.last = torch.nn.Linear(3, 3)
        self.last.weight = self.middle.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.tanh(self.middle(torch.tanh(self.first(x)))))


class TiedAutoencoder(torch.nn.Module):
    """5 -> 3 -> tanh -> 5: ``enc`` is called, then its weight decodes directly (a tied
    decoder), so hooks on ``enc`` see only the call, not the direct use."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(torch.tanh(self.enc(x)), self.enc.weight.t())


@pytest.fixture
def tiny_tied() -> torch.nn.Module:
    """:class:`TiedLayers` in float64."""
    return build_model(TiedLayers, seed=0, dtype=torch.float64)


@pytest.fixture
def tiny_data() -> Examples:
    """20 float64 examples with 6 features and 3 classes."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(20, 6, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 3, (20,), generator=generator)
    return Examples(inputs, targets)
