"""The causal transformer: vmap per-sample gradients on it, causality, and refused settings."""

from functools import partial

import pytest
import torch

from tda.grads import per_sample_gradients
from tda.models import build_model
from tda.task import IGNORE_INDEX, LanguageModelingTask
from tda.transformer import CausalTransformer

TINY = partial(CausalTransformer, vocab_size=6, context=5, dim=4, heads=2, layers=1, hidden=8)
TASK = LanguageModelingTask()


@pytest.fixture
def tiny_lm():
    return build_model(TINY, seed=0, dtype=torch.float64)


@pytest.fixture
def sequences():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, 6, (7, 5), generator=generator)
    targets = torch.randint(0, 6, (7, 5), generator=generator)
    targets[:, :2] = IGNORE_INDEX
    return inputs, targets


@pytest.mark.parametrize("function", ["output", "loss"])
def test_vmap_gradients_equal_a_per_example_autograd_loop(tiny_lm, sequences, function):
    inputs, targets = sequences
    gradients = per_sample_gradients(
        tiny_lm, TASK, inputs, targets, function=function, vectorize=True
    )
    rows = []
    for x, y in zip(inputs, targets, strict=True):
        value = getattr(TASK, function)(tiny_lm(x[None])[0], y)
        grads = torch.autograd.grad(value, list(tiny_lm.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    torch.testing.assert_close(gradients, torch.stack(rows), rtol=1e-10, atol=1e-12)


def test_a_position_sees_only_earlier_tokens(tiny_lm, sequences):
    inputs, _ = sequences
    changed = inputs.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 6
    before, after = tiny_lm(inputs), tiny_lm(changed)
    torch.testing.assert_close(before[:, :3], after[:, :3], rtol=0, atol=0)
    assert not torch.allclose(before[:, 3:], after[:, 3:])


def test_bad_settings_and_long_sequences_are_refused(tiny_lm):
    with pytest.raises(ValueError, match="divisible"):
        CausalTransformer(dim=6, heads=4)
    with pytest.raises(ValueError, match="at least 1"):
        CausalTransformer(layers=0)
    with pytest.raises(ValueError, match="longer than the context 5"):
        tiny_lm(torch.zeros(1, 6, dtype=torch.long))


@pytest.mark.parametrize("hidden", [0, -3])
def test_a_hidden_width_below_one_is_refused(hidden):
    # hidden=0 silently built a 4 * dim MLP; -3 failed inside nn.Linear
    with pytest.raises(ValueError, match=f"hidden must be at least 1 .*got {hidden}"):
        CausalTransformer(dim=4, heads=2, hidden=hidden)
    assert CausalTransformer(dim=4, heads=2, hidden=3).blocks[0].mlp[0].out_features == 3


@pytest.mark.parametrize("shape", [(5,), (2, 3, 5)])
def test_tokens_must_come_as_batch_by_positions(tiny_lm, shape):
    # an unbatched [T] failed with "not enough values to unpack (expected 3, got 2)"
    with pytest.raises(ValueError, match=r"token ids \[batch, T\], got shape"):
        tiny_lm(torch.zeros(shape, dtype=torch.long))
