"""Shared fixtures: tiny MNIST-1D (300 train / 100 test), the reference MLP trained on it, and a
float64 logistic regression of 3 classes (the head predictors' exact references)."""

import pytest
import torch

from tda.data import Examples, load_mnist1d
from tda.models import LogisticRegression, build_model
from tda.training import TrainConfig, train
from tests.unlearn.reference import FACTORY, TRAIN_CONFIG


@pytest.fixture(scope="session")
def mnist():
    return load_mnist1d(300, 100, seed=0)


@pytest.fixture(scope="session")
def _trained_state(mnist):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = train(build_model(FACTORY, 0), mnist.train, TRAIN_CONFIG, seed=0).model
    torch.set_num_threads(threads)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained(_trained_state):
    """A fresh copy of the MLP trained on ``mnist.train`` (tests may not share mutations)."""
    model = build_model(FACTORY, 0)
    model.load_state_dict(_trained_state)
    return model.eval()


@pytest.fixture(scope="module")
def convex():
    """Float64 logistic regression trained on 60 noisy linearly labelled points of 3 classes."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(60, 5, generator=generator, dtype=torch.float64)
    weights = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    noise = 0.5 * torch.randn(60, 3, generator=generator, dtype=torch.float64)
    data = Examples(inputs, (inputs @ weights + noise).argmax(dim=1))
    model = build_model(lambda: LogisticRegression(5, 3), 0, dtype=torch.float64)
    train(model, data, TrainConfig(epochs=5, batch_size=20))
    return model, data
