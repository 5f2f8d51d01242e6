import copy
import math

import pytest
import torch

from tda.fingerprint import model_fingerprint
from tests.unlearn.reference import MOMENTUM_AND_DECAY, summed_by_loop
from unlearn import (
    WAGLE,
    ForgetSplit,
    GradientDifference,
    NegativePreferenceOptimization,
    UnlearningRequest,
    apply_mask,
    magnitude_mask,
    weight_attribution,
    weight_attribution_mask,
)


def _split(data) -> ForgetSplit:
    return ForgetSplit.of(data, UnlearningRequest([0, 3, 5, 8, 11], train_size=len(data), seed=1))


@pytest.mark.parametrize("curvature", [1e-3, 10.0])
def test_weight_attribution_equals_its_formula_from_per_example_gradients(
    tiny_mlp, tiny_data, curvature
):
    split = _split(tiny_data)
    forget = summed_by_loop(tiny_mlp, split.forget)
    retain = summed_by_loop(tiny_mlp, split.retain)
    scores = weight_attribution(tiny_mlp, split.forget, split.retain, curvature=curvature)
    for (name, p), g_f, g_r in zip(tiny_mlp.named_parameters(), forget, retain, strict=True):
        expected = ((p.detach() - g_r / curvature) * g_f).abs()
        torch.testing.assert_close(scores[name], expected, rtol=1e-12, atol=0)
    assert all(p.grad is None for p in tiny_mlp.parameters())


def test_the_weights_own_value_matters_only_where_curvature_is_large(tiny_mlp, tiny_data):
    split = _split(tiny_data)
    ranking = {
        mu: torch.cat(
            [
                s.flatten()
                for s in weight_attribution(
                    tiny_mlp, split.forget, split.retain, curvature=mu
                ).values()
            ]
        ).argsort()
        for mu in (1e-6, 1e6)
    }
    by_gradients = torch.cat(
        [
            (g_r * g_f).abs().flatten()
            for g_r, g_f in zip(
                summed_by_loop(tiny_mlp, split.retain),
                summed_by_loop(tiny_mlp, split.forget),
                strict=True,
            )
        ]
    ).argsort()
    by_weights = torch.cat(
        [
            (p.detach() * g_f).abs().flatten()
            for p, g_f in zip(
                tiny_mlp.parameters(), summed_by_loop(tiny_mlp, split.forget), strict=True
            )
        ]
    ).argsort()
    assert torch.equal(ranking[1e-6], by_gradients) and torch.equal(ranking[1e6], by_weights)


@pytest.mark.parametrize("fraction", [0.05, 0.8, 1.0])
def test_the_mask_keeps_the_top_fraction_of_scores_globally(tiny_mlp, tiny_data, fraction):
    split = _split(tiny_data)
    mask = weight_attribution_mask(tiny_mlp, split.forget, split.retain, fraction)
    scores = torch.cat(
        [s.flatten() for s in weight_attribution(tiny_mlp, split.forget, split.retain).values()]
    )
    chosen = torch.cat([m.flatten() for m in mask.values()])
    assert int(chosen.sum()) == math.ceil(fraction * 83)
    if fraction < 1:
        assert scores[chosen].min() >= scores[~chosen].max()


@pytest.mark.parametrize(
    "base",
    [GradientDifference(MOMENTUM_AND_DECAY), NegativePreferenceOptimization(MOMENTUM_AND_DECAY)],
    ids=["GradDiff", "NPO"],
)
def test_wagle_is_its_base_inside_the_mask_and_leaves_the_rest_bitwise(tiny_mlp, tiny_data, base):
    split = _split(tiny_data)
    mask = weight_attribution_mask(tiny_mlp, split.forget, split.retain, 0.4, curvature=0.1)
    before = {name: p.detach().clone() for name, p in tiny_mlp.named_parameters()}
    wagle = WAGLE(base, fraction=0.4, curvature=0.1).unlearn(copy.deepcopy(tiny_mlp), split, seed=1)
    by_hand = base.unlearn(tiny_mlp, split, seed=1, mask=mask)
    assert model_fingerprint(wagle) == model_fingerprint(by_hand)
    for name, p in wagle.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(
            p.detach()[frozen].view(torch.int64), before[name][frozen].view(torch.int64)
        )
        assert (p.detach()[mask[name]] != before[name][mask[name]]).all()


def test_wagle_intersects_its_mask_with_the_callers(tiny_mlp, tiny_data):
    split = _split(tiny_data)
    caller = {"2.weight": torch.zeros_like(tiny_mlp.get_parameter("2.weight"), dtype=torch.bool)}
    before = tiny_mlp.get_parameter("2.weight").detach().clone()
    first_layer = tiny_mlp.get_parameter("0.weight").detach().clone()
    unlearned = WAGLE(GradientDifference(MOMENTUM_AND_DECAY), fraction=1.0).unlearn(
        tiny_mlp, split, seed=0, mask=caller
    )
    assert torch.equal(unlearned.get_parameter("2.weight").detach(), before)
    assert not torch.equal(unlearned.get_parameter("0.weight").detach(), first_layer)


def test_a_frozen_layer_scores_zero_and_wagle_leaves_it_bitwise(tiny_mlp, tiny_data):
    split = _split(tiny_data)
    tiny_mlp.get_parameter("0.weight").requires_grad_(False)
    before = {name: p.detach().clone() for name, p in tiny_mlp.named_parameters()}
    scores = weight_attribution(tiny_mlp, split.forget, split.retain, curvature=0.1)
    assert torch.equal(scores["0.weight"], torch.zeros(8, 6, dtype=torch.float64))
    unlearned = WAGLE(GradientDifference(MOMENTUM_AND_DECAY), curvature=0.1).unlearn(
        tiny_mlp, split, seed=0
    )
    assert torch.equal(unlearned.get_parameter("0.weight").detach(), before["0.weight"])
    assert not torch.equal(unlearned.get_parameter("2.weight").detach(), before["2.weight"])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fraction": 0.0}, r"fraction must be in \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        ({"curvature": 0.0}, "curvature must be positive"),
    ],
)
def test_wagle_refuses_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        WAGLE(**settings)


def test_weight_attribution_refuses_empty_sets_and_bad_curvature(tiny_mlp, tiny_data):
    split = _split(tiny_data)
    with pytest.raises(ValueError, match="non-empty forget set and retain set"):
        weight_attribution(tiny_mlp, split.forget.subset([]), split.retain)
    with pytest.raises(ValueError, match="mu must be positive"):
        weight_attribution(tiny_mlp, split.forget, split.retain, curvature=-1.0)


def test_a_nan_curvature_is_refused_not_turned_into_an_arbitrary_mask(tiny_mlp, tiny_data):
    """Every score was NaN and WAGLE unlearned inside whichever weights topk put first."""
    split = _split(tiny_data)
    with pytest.raises(ValueError, match="mu must be positive"):
        weight_attribution(tiny_mlp, split.forget, split.retain, curvature=math.nan)
    with pytest.raises(ValueError, match="curvature must be positive"):
        WAGLE(curvature=math.nan)


def test_wagle_inside_a_pruning_mask_frees_the_fraction_of_the_kept_weights(tiny_mlp, tiny_data):
    """Pruned weights competed in the ranking over all 83 weights, so r = 0.5 inside a 50% pruning
    mask freed 25 of the 47 kept weights, not ceil(0.5 * 47) = 24: the count depended on how the
    pruned weights happened to rank."""
    split = _split(tiny_data)
    pruned = copy.deepcopy(tiny_mlp)
    kept = magnitude_mask(pruned, 0.5)
    apply_mask(pruned, kept)
    allowed = 83 - sum(int((~m).sum()) for m in kept.values())
    base = GradientDifference(MOMENTUM_AND_DECAY)
    unlearned = WAGLE(base, fraction=0.5, curvature=0.1).unlearn(
        copy.deepcopy(pruned), split, seed=1, mask=kept
    )
    changed = {
        name: p.detach().view(torch.int64) != pruned.get_parameter(name).detach().view(torch.int64)
        for name, p in unlearned.named_parameters()
    }
    assert allowed == 47
    assert sum(int(c.sum()) for c in changed.values()) == math.ceil(0.5 * allowed)
    assert all(not (changed[name] & ~m).any() for name, m in kept.items())
    mask = weight_attribution_mask(
        pruned, split.forget, split.retain, 0.5, curvature=0.1, allowed=kept
    )
    assert all(torch.equal(changed[name], mask[name]) for name in mask)
