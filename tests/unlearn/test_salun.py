import copy
import math

import pytest
import torch

from tda.fingerprint import model_fingerprint
from tests.unlearn.reference import MOMENTUM_AND_DECAY, summed_by_loop
from unlearn import (
    WAGLE,
    ForgetSplit,
    RandomLabels,
    SalUn,
    UnlearningRequest,
    saliency_mask,
    summed_gradient,
    top_fraction_mask,
)


def test_the_summed_gradient_equals_a_loop_over_examples(tiny_mlp, tiny_data):
    names = [name for name, _ in tiny_mlp.named_parameters()]
    expected = dict(zip(names, summed_by_loop(tiny_mlp, tiny_data), strict=True))
    computed = summed_gradient(tiny_mlp, tiny_data, batch_size=7)
    for name in expected:
        torch.testing.assert_close(computed[name], expected[name], rtol=0, atol=1e-12)
    assert all(p.grad is None for p in tiny_mlp.parameters())


@pytest.mark.parametrize("fraction", [0.01, 0.3, 1.0])
def test_the_saliency_mask_keeps_the_largest_gradients_globally(tiny_mlp, tiny_data, fraction):
    mask = saliency_mask(tiny_mlp, tiny_data, fraction)
    magnitude = torch.cat(
        [g.abs().flatten() for g in summed_gradient(tiny_mlp, tiny_data).values()]
    )
    chosen = torch.cat([m.flatten() for m in mask.values()])
    assert int(chosen.sum()) == math.ceil(fraction * 83)
    if fraction < 1:
        assert magnitude[chosen].min() >= magnitude[~chosen].max()
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        top_fraction_mask({"w": torch.ones(3)}, 0.0)


@pytest.mark.parametrize(
    ("fraction", "size", "kept"), [(0.28, 25, 7), (0.07, 100, 7), (0.35, 10, 4)]
)
def test_the_kept_count_is_ceil_of_the_fraction_despite_float_rounding(fraction, size, kept):
    scores = {"w": torch.arange(size, dtype=torch.float64)}
    assert int(top_fraction_mask(scores, fraction)["w"].sum()) == kept


def test_salun_is_random_labels_inside_the_mask_and_leaves_the_rest_bitwise(tiny_mlp, tiny_data):
    request = UnlearningRequest([0, 3, 5, 8], train_size=len(tiny_data), seed=1)
    split = ForgetSplit.of(tiny_data, request)
    mask = saliency_mask(tiny_mlp, split.forget, 0.4)
    before = {name: p.detach().clone() for name, p in tiny_mlp.named_parameters()}
    salun = SalUn(MOMENTUM_AND_DECAY, fraction=0.4).unlearn(copy.deepcopy(tiny_mlp), split, seed=1)
    by_hand = RandomLabels(MOMENTUM_AND_DECAY).unlearn(tiny_mlp, split, seed=1, mask=mask)
    assert model_fingerprint(salun) == model_fingerprint(by_hand)
    for name, p in salun.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(
            p.detach()[frozen].view(torch.int64), before[name][frozen].view(torch.int64)
        )
        assert (p.detach()[mask[name]] != before[name][mask[name]]).all()


def test_salun_intersects_its_mask_with_the_callers(tiny_mlp, tiny_data):
    split = ForgetSplit.of(tiny_data, UnlearningRequest([1, 2], train_size=len(tiny_data)))
    caller = {"2.weight": torch.zeros_like(tiny_mlp.get_parameter("2.weight"), dtype=torch.bool)}
    before = tiny_mlp.get_parameter("2.weight").detach().clone()
    unlearned = SalUn(MOMENTUM_AND_DECAY, fraction=1.0).unlearn(
        tiny_mlp, split, seed=0, mask=caller
    )
    assert torch.equal(unlearned.get_parameter("2.weight"), before)
    for bad in (1.5, True):  # True would read as the fraction 1
        with pytest.raises(ValueError, match="fraction must be in"):
            SalUn(fraction=bad)
        with pytest.raises(ValueError, match="fraction must be in"):
            WAGLE(fraction=bad)


def test_frozen_and_unused_parameters_get_a_zero_summed_gradient(tiny_mlp, tiny_data):
    names = [name for name, _ in tiny_mlp.named_parameters()]
    expected = dict(zip(names, summed_by_loop(tiny_mlp, tiny_data), strict=True))
    tiny_mlp.get_parameter("0.weight").requires_grad_(False)
    tiny_mlp.register_parameter("unused", torch.nn.Parameter(torch.ones(2, dtype=torch.float64)))
    computed = summed_gradient(tiny_mlp, tiny_data, batch_size=7)
    assert torch.equal(computed["0.weight"], torch.zeros(8, 6, dtype=torch.float64))
    assert torch.equal(computed["unused"], torch.zeros(2, dtype=torch.float64))
    for name in ("0.bias", "2.weight", "2.bias"):
        torch.testing.assert_close(computed[name], expected[name], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="requires_grad=False"):
        summed_gradient(tiny_mlp.requires_grad_(False), tiny_data)


def test_salun_runs_on_a_model_with_a_frozen_layer_and_leaves_it_bitwise(tiny_mlp, tiny_data):
    tiny_mlp.get_parameter("0.weight").requires_grad_(False)
    before = {name: p.detach().clone() for name, p in tiny_mlp.named_parameters()}
    split = ForgetSplit.of(tiny_data, UnlearningRequest([1, 2], train_size=len(tiny_data)))
    unlearned = SalUn(MOMENTUM_AND_DECAY, fraction=0.5).unlearn(tiny_mlp, split, seed=0)
    assert torch.equal(unlearned.get_parameter("0.weight").detach(), before["0.weight"])
    assert not torch.equal(unlearned.get_parameter("2.weight").detach(), before["2.weight"])


def test_nan_scores_are_refused_naming_the_parameter():
    """topk ranks NaN above every number: a NaN score was kept as the most salient weight."""
    scores = {"a": torch.tensor([1.0, 0.5]), "b": torch.tensor([math.nan, 0.2])}
    with pytest.raises(ValueError, match="'b' hold NaN"):
        top_fraction_mask(scores, 0.5)
