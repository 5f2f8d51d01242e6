"""Layers as y_t = W a_t + b: the unfolded patches reproduce every convolution's output exactly."""

import pytest
import torch
from torch import nn

from tda.layer_positions import input_positions, is_positional, output_positions

CONVOLUTIONS = {
    "conv1d": (lambda: nn.Conv1d(2, 3, 3), (2, 9)),
    "conv1d-strided-dilated": (
        lambda: nn.Conv1d(2, 3, 3, stride=2, dilation=2, padding=2),
        (2, 11),
    ),
    "conv1d-same-even-kernel": (lambda: nn.Conv1d(1, 2, 4, padding="same"), (1, 7)),
    "conv1d-same-replicate": (
        lambda: nn.Conv1d(2, 2, 4, padding="same", dilation=2, padding_mode="replicate"),
        (2, 9),
    ),
    "conv1d-valid-no-bias": (lambda: nn.Conv1d(2, 3, 2, padding="valid", bias=False), (2, 6)),
    "conv2d-reflect": (
        lambda: nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=(1, 1), padding_mode="reflect"),
        (2, 5, 6),
    ),
    "conv2d-same-circular": (
        lambda: nn.Conv2d(1, 2, (2, 3), padding="same", dilation=(2, 1), padding_mode="circular"),
        (1, 6, 5),
    ),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_patches_times_the_weight_are_the_convolution(name):
    factory, shape = CONVOLUTIONS[name]
    torch.manual_seed(0)
    conv = factory().double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    patches = input_positions(conv, x)  # [b, T, in * kernel]
    y = patches @ conv.weight.reshape(conv.out_channels, -1).T
    if conv.bias is not None:
        y = y + conv.bias
    expected = output_positions(conv, conv(x))
    assert patches.shape[:2] == expected.shape[:2]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_linear_inputs_keep_their_positions():
    linear = nn.Linear(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    assert torch.equal(input_positions(linear, x), x)
    assert output_positions(linear, linear(x)).shape == (2, 5, 3)
    assert input_positions(linear, x[:, 0]).shape == (2, 1, 4)


def test_which_layers_are_positional():
    assert is_positional(nn.Linear(2, 2))
    assert is_positional(nn.Conv1d(2, 2, 3)) and is_positional(nn.Conv2d(2, 2, 3))
    assert not is_positional(nn.Conv1d(2, 2, 3, groups=2))
    assert not is_positional(nn.Conv3d(2, 2, 3))
    assert not is_positional(nn.ConvTranspose1d(2, 2, 3))
    assert not is_positional(nn.BatchNorm1d(2))


def test_unbatched_convolution_inputs_are_refused():
    with pytest.raises(ValueError, match=r"shape \[2, 9\].*batched inputs"):
        input_positions(nn.Conv1d(2, 3, 3), torch.randn(2, 9))


def test_unbatched_linear_inputs_are_refused():
    """A model that calls a Linear layer one example at a time gives it 1-D inputs."""
    with pytest.raises(ValueError, match=r"Linear got an input of shape \[4\].*batched inputs"):
        input_positions(nn.Linear(4, 3), torch.randn(4))
