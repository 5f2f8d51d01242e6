"""Shared fixtures: tiny MNIST-1D (300 train / 100 test) and the reference MLP trained on it."""

import pytest
import torch

from tda.data import load_mnist1d
from tda.models import build_model
from tda.training import train
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
