"""The small linear-regression problem the Source tests (test_source*.py) share."""

import pytest
import torch

from tda.data import Examples


@pytest.fixture(scope="module")
def data():
    """8 training and 3 query examples; column scales spread the Hessian's eigenvalues."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(11, 3, generator=generator, dtype=torch.float64)
    inputs = inputs * torch.tensor([1.5, 0.6, 0.2], dtype=torch.float64)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3
    targets = targets + 0.5 * torch.randn(11, generator=generator, dtype=torch.float64)
    return Examples(inputs[:8], targets[:8]), Examples(inputs[8:], targets[8:])
