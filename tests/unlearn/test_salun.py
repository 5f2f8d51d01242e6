import copy
import math

import pytest
import torch

from tda.fingerprint import model_fingerprint
from tests.unlearn.reference import MOMENTUM_AND_DECAY, summed_by_loop
from unlearn import (
    WAGLE,
    ForgetSplit,
    MagnitudePruning,
    PruneThenUnlearn,
    RandomLabels,
    SalUn,
    UnlearningRequest,
    apply_mask,
    magnitude_mask,
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


def _changed(after: torch.nn.Module, before: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Per parameter, which weights differ (bitwise) between two models."""
    return {
        name: p.detach().view(torch.int64) != before.get_parameter(name).detach().view(torch.int64)
        for name, p in after.named_parameters()
    }


def _pruned(model: torch.nn.Module, sparsity: float):
    """A pruned copy of ``model`` and its pruning mask (weight matrices only; biases free)."""
    pruned = copy.deepcopy(model)
    kept = magnitude_mask(pruned, sparsity)
    apply_mask(pruned, kept)
    return pruned, kept


def test_the_top_fraction_is_taken_among_the_weights_the_mask_allows():
    generator = torch.Generator().manual_seed(0)
    scores = {
        "a": torch.rand(4, 5, generator=generator, dtype=torch.float64),
        "b": torch.rand(7, generator=generator, dtype=torch.float64),
    }
    allowed = {"a": torch.rand(4, 5, generator=generator) < 0.5}  # "b" unnamed: all allowed
    free = int(allowed["a"].sum()) + 7
    for fraction in (0.3, 0.5, 1.0):
        mask = top_fraction_mask(scores, fraction, allowed=allowed)
        assert not (mask["a"] & ~allowed["a"]).any()
        assert int(mask["a"].sum() + mask["b"].sum()) == math.ceil(fraction * free)
        kept = torch.cat([scores["a"][mask["a"]], scores["b"][mask["b"]]])
        passed = torch.cat([scores["a"][allowed["a"] & ~mask["a"]], scores["b"][~mask["b"]]])
        if fraction < 1:
            assert kept.min() >= passed.max()
    assert torch.equal(top_fraction_mask(scores, 1.0, allowed=allowed)["a"], allowed["a"])
    everything = {"a": torch.ones(4, 5, dtype=torch.bool)}
    for fraction in (0.07, 0.5):  # allowing every weight is no mask at all, bit for bit
        plain, inside = (
            top_fraction_mask(scores, fraction),
            top_fraction_mask(scores, fraction, allowed=everything),
        )
        assert all(torch.equal(plain[name], inside[name]) for name in scores)
    with pytest.raises(ValueError, match="'c', which has no scores"):
        top_fraction_mask(scores, 0.5, allowed={"c": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"'b' has shape \(6,\)"):
        top_fraction_mask(scores, 0.5, allowed={"b": torch.ones(6, dtype=torch.bool)})


def test_salun_inside_a_pruning_mask_frees_the_fraction_of_the_kept_weights(tiny_mlp, tiny_data):
    """Pruned weights competed in the ranking over all 83 weights, so r = 0.5 inside a 50% pruning
    mask freed 26 of the 47 kept weights, not ceil(0.5 * 47) = 24: the count depended on how the
    pruned weights happened to rank."""
    split = ForgetSplit.of(tiny_data, UnlearningRequest([0, 3, 5, 8], train_size=20, seed=1))
    pruned, kept = _pruned(tiny_mlp, 0.5)
    allowed = 83 - sum(int((~m).sum()) for m in kept.values())
    assert allowed == 47
    unlearned = SalUn(MOMENTUM_AND_DECAY, fraction=0.5).unlearn(
        copy.deepcopy(pruned), split, seed=1, mask=kept
    )
    changed = _changed(unlearned, pruned)
    assert sum(int(c.sum()) for c in changed.values()) == math.ceil(0.5 * allowed)
    assert all(not (changed[name] & ~m).any() for name, m in kept.items())
    through = PruneThenUnlearn(MagnitudePruning(0.5), SalUn(MOMENTUM_AND_DECAY, fraction=0.5))
    assert model_fingerprint(
        through.unlearn(copy.deepcopy(tiny_mlp), split, seed=1)
    ) == model_fingerprint(unlearned)
    whole = SalUn(MOMENTUM_AND_DECAY, fraction=1.0).unlearn(
        copy.deepcopy(pruned), split, seed=1, mask=kept
    )  # r = 1 is exactly the pruning mask
    changed = _changed(whole, pruned)
    assert all(torch.equal(changed[name], m) for name, m in kept.items())
    assert sum(int(c.sum()) for c in changed.values()) == allowed
