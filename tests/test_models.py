import functools

import pytest
import torch

from tda.data import Examples
from tda.models import CNN1d, build_model, model_dtype


@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("length", [7, 40, 41])
def test_cnn1d_head_fits_every_kernel_size_and_length(kernel_size, length):
    # the head assumed ceil(length / 4) positions, true only for odd kernels: an even kernel
    # failed at its first forward with "mat1 and mat2 shapes cannot be multiplied"
    model = CNN1d(length=length, channels=3, num_classes=4, kernel_size=kernel_size)
    positions = model.features(torch.zeros(2, 1, length)).shape[-1]
    assert model.head.in_features == 3 * positions
    assert model(torch.zeros(2, length)).shape == (2, 4)


def test_cnn1d_with_an_odd_kernel_keeps_its_head_width():
    assert CNN1d(length=40, channels=32, kernel_size=5).head.in_features == 32 * 10
    assert CNN1d(length=41, channels=2, kernel_size=3).head.in_features == 2 * 11


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (torch.zeros(2, 3, dtype=torch.float64), torch.float64),
        (torch.zeros(2, 3, dtype=torch.bfloat16), torch.bfloat16),
        (torch.zeros(2, 3), torch.float32),
        (torch.zeros(2, 3, dtype=torch.long), torch.float32),  # token ids: no module dtype
    ],
)
def test_models_are_built_in_the_dtype_of_floating_inputs(inputs, expected):
    assert model_dtype(Examples(inputs, torch.zeros(2, dtype=torch.long))) == expected


def test_a_setting_the_model_does_not_take_is_named_with_the_factorys_settings():
    # experiment=tiny model=cnn1d: the tiny experiment's MLP width reached the CNN
    factory = functools.partial(CNN1d, hidden=[16])
    with pytest.raises(TypeError, match=r"'hidden'.*its settings: .*'hidden'.*model=cnn1d"):
        build_model(factory, 0)
    with pytest.raises(TypeError, match="missing") as other:  # other TypeErrors pass unchanged
        build_model(torch.nn.Linear, 0)
    assert "its settings" not in str(other.value)
