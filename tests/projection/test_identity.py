"""IdentityProjector: the exact reference that projected methods reduce to."""

import pytest
import torch

from tda.projection import IdentityProjector


def test_returns_the_input_unchanged():
    x = torch.randn(5, 7, dtype=torch.float64)
    projector = IdentityProjector()
    out = projector.project(x)
    assert out is x  # no copy for float32/float64 inputs
    assert torch.equal(out, x.clone())
    assert projector.output_dim(7) == 7


def test_converts_other_dtypes_to_float32_exactly():
    x = torch.tensor([[1.5, -2.25], [0.0, 3.0]], dtype=torch.bfloat16)
    out = IdentityProjector().project(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[1.5, -2.25], [0.0, 3.0]]))


def test_output_does_not_depend_on_seed():
    x = torch.randn(3, 4)
    assert torch.equal(IdentityProjector(seed=1).project(x), IdentityProjector(seed=2).project(x))


@pytest.mark.parametrize("bad", [0, -3, 2.0])
def test_rejects_bad_input_dim(bad):
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1"):
        IdentityProjector(input_dim=bad)
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1"):
        IdentityProjector().output_dim(bad)
