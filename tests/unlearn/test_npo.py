import copy
import math
from functools import partial

import pytest
import torch

from tda.data import Examples
from tda.fingerprint import model_fingerprint
from tda.task import ClassificationTask
from unlearn import (
    ForgetSplit,
    GradientDifference,
    LoopConfig,
    NegativePreferenceOptimization,
    NPOLoss,
    UnlearningRequest,
)

PLAIN_SGD = partial(torch.optim.SGD, lr=0.2)


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return other


def test_the_npo_gradient_is_ascent_weighted_by_how_unforgotten_each_example_is(
    tiny_mlp, tiny_data
):
    beta, task = 0.7, ClassificationTask()
    reference = _perturbed(tiny_mlp, seed=3).requires_grad_(False)
    parameters = list(tiny_mlp.parameters())
    computed = torch.autograd.grad(
        NPOLoss(reference, beta, 0.0).forget_term(tiny_mlp, tiny_data), parameters
    )
    expected = [torch.zeros_like(p) for p in parameters]
    for x, y in zip(tiny_data.inputs, tiny_data.targets, strict=True):
        loss = task.loss(tiny_mlp(x[None]), y[None]).sum()
        gap = loss.detach() - task.loss(reference(x[None]), y[None]).sum()
        weight = -2.0 * torch.sigmoid(-beta * gap) / len(tiny_data)
        for total, g in zip(expected, torch.autograd.grad(loss, parameters), strict=True):
            total += weight * g
    for got, want in zip(computed, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def _split(data: Examples) -> ForgetSplit:
    return ForgetSplit.of(data, UnlearningRequest([1, 4, 9, 13], train_size=len(data)))


def test_the_first_npo_step_is_graddiffs(tiny_mlp, tiny_data):
    one_step = LoopConfig(epochs=1, batch_size=4, optimizer=PLAIN_SGD)
    split = _split(tiny_data)
    npo = NegativePreferenceOptimization(one_step, beta=0.5, retain_weight=0.7)
    graddiff = GradientDifference(one_step, retain_weight=0.7)
    first = npo.unlearn(copy.deepcopy(tiny_mlp), split, seed=2)
    second = graddiff.unlearn(copy.deepcopy(tiny_mlp), split, seed=2)
    moved = zip(first.parameters(), tiny_mlp.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in moved)
    for p, q in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-14)


def _largest_difference(first, second) -> float:
    return max(
        float((p - q).detach().abs().max())
        for p, q in zip(first.parameters(), second.parameters(), strict=True)
    )


def test_npo_becomes_graddiff_as_beta_goes_to_zero_and_differs_otherwise(tiny_mlp, tiny_data):
    loop = LoopConfig(epochs=6, batch_size=2, optimizer=PLAIN_SGD)
    split = _split(tiny_data)
    graddiff = GradientDifference(loop).unlearn(copy.deepcopy(tiny_mlp), split, seed=0)
    differences = {
        beta: _largest_difference(
            graddiff,
            NegativePreferenceOptimization(loop, beta=beta).unlearn(
                copy.deepcopy(tiny_mlp), split, seed=0
            ),
        )
        for beta in (1e-7, 1.0)
    }
    assert differences[1e-7] < 1e-6 < 1e-2 < differences[1.0]


def test_npo_forgets_more_slowly_than_graddiff_once_the_forget_loss_has_risen(tiny_mlp, tiny_data):
    """The per-example weight 2 sigma(-beta * gap) fades as the loss on F rises: with the same
    steps NPO raises the forget loss less than unbounded ascent does."""
    loop = LoopConfig(epochs=20, batch_size=4, optimizer=PLAIN_SGD)
    split = _split(tiny_data)
    task = ClassificationTask()

    def forget_loss(model) -> float:
        with torch.no_grad():
            return float(task.loss(model(split.forget.inputs), split.forget.targets).mean())

    before = forget_loss(tiny_mlp)
    npo = NegativePreferenceOptimization(loop, beta=2.0, retain_weight=0.0)
    graddiff = GradientDifference(loop, retain_weight=0.0)
    npo_loss = forget_loss(npo.unlearn(copy.deepcopy(tiny_mlp), split, seed=0))
    graddiff_loss = forget_loss(graddiff.unlearn(copy.deepcopy(tiny_mlp), split, seed=0))
    assert before < npo_loss < graddiff_loss


def test_npo_is_seeded_and_leaves_its_reference_out_of_the_result(tiny_mlp, tiny_data):
    method = NegativePreferenceOptimization(LoopConfig(epochs=2, batch_size=2))
    split = _split(tiny_data)
    first = method.unlearn(copy.deepcopy(tiny_mlp), split, seed=5)
    second = method.unlearn(copy.deepcopy(tiny_mlp), split, seed=5)
    assert model_fingerprint(first) == model_fingerprint(second)
    assert all(p.requires_grad for p in first.parameters())


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"beta": 0.0}, "beta must be positive"), ({"retain_weight": -1.0}, "non-negative")],
)
def test_npo_refuses_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        NegativePreferenceOptimization(**settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"beta": math.nan},
        {"beta": math.inf},
        {"retain_weight": math.nan},
        {"retain_weight": math.inf},
    ],
)
def test_npo_refuses_nan_and_infinite_settings_before_running(settings):
    """They made the first loss NaN or infinite, reported as a diverged run ("lower the learning
    rate"), as GradDiff's retain weight did before it was checked."""
    with pytest.raises(ValueError, match="finite"):
        NegativePreferenceOptimization(**settings)
