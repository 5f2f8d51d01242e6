"""Fixtures shared by the benchmark tests."""

import pytest
import torch


@pytest.fixture
def threads():
    """The benchmarks set torch's threads; the test process gets its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
