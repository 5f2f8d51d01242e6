"""TOFU-style measures: answer probabilities, truth ratios, forget quality and model utility."""

from functools import partial

import numpy as np
import pytest
import torch
from scipy import stats

from tda.data.facts import make_facts
from tda.models import build_model
from tda.task import IGNORE_INDEX
from tda.transformer import CausalTransformer
from unlearn.forget_quality import (
    answer_probabilities,
    forget_quality,
    model_utility,
    truth_ratios,
)


@pytest.fixture(scope="module")
def facts():
    return make_facts(people=3, seed=0)


@pytest.fixture(scope="module")
def model(facts):
    length = facts.facts.inputs.shape[1]
    factory = partial(CausalTransformer, context=length, dim=8, heads=2, layers=1)
    return build_model(factory, seed=0, dtype=torch.float64)


def _by_hand(model, examples):
    """Geometric-mean token probability of each answer, one example at a time."""
    values = []
    for x, y in zip(examples.inputs, examples.targets, strict=True):
        log_probabilities = torch.log_softmax(model(x[None])[0], dim=-1)
        counted = y != IGNORE_INDEX
        values.append(float(log_probabilities[counted, y[counted]].mean().exp()))
    return np.array(values)


def test_answer_probability_is_the_geometric_mean_of_the_answer_tokens(model, facts):
    with torch.no_grad():
        expected = _by_hand(model, facts.facts)
    np.testing.assert_allclose(answer_probabilities(model, facts.facts), expected, rtol=1e-12)


def test_truth_ratio_divides_the_mean_perturbed_probability_by_the_true_one(model, facts):
    rows = [0, 5, 9]
    with torch.no_grad():
        true = _by_hand(model, facts.facts.subset(rows))
        wrong = _by_hand(model, facts.perturbed_of(rows)).reshape(3, facts.alternatives)
    np.testing.assert_allclose(truth_ratios(model, facts, rows), wrong.mean(1) / true, rtol=1e-12)
    with pytest.raises(ValueError, match="at least one fact"):
        truth_ratios(model, facts, [])


def test_model_utility_is_the_harmonic_mean_of_probability_and_truth_score(model, facts):
    rows = np.arange(len(facts.facts))
    probability = answer_probabilities(model, facts.facts).mean()
    truth = np.maximum(0, 1 - truth_ratios(model, facts, rows)).mean()
    expected = 2 * probability * truth / (probability + truth) if truth > 0 else 0.0
    assert model_utility(model, facts, rows) == pytest.approx(expected, rel=1e-12)


def test_forget_quality_is_one_for_alike_ratios_and_tiny_for_separated_ones():
    ratios = np.random.default_rng(0).uniform(0.2, 1.0, 80)
    assert forget_quality(ratios, ratios) == 1.0
    assert forget_quality(ratios, ratios + 2.0) < 1e-20


def test_forget_quality_is_the_two_sided_ks_p_value_of_overlapping_ratios():
    rng = np.random.default_rng(1)
    unlearned, retained = rng.uniform(0.2, 1.0, 60), rng.uniform(0.3, 1.1, 45)
    expected = stats.ks_2samp(unlearned, retained).pvalue  # two-sided, exact for these sizes
    assert 1e-6 < expected < 0.5  # overlapping: neither identical nor separated
    assert forget_quality(unlearned, retained) == pytest.approx(expected, rel=1e-12)
    assert forget_quality(retained, unlearned) == pytest.approx(expected, rel=1e-12)


def test_forget_quality_is_tiny_whichever_way_the_ratios_are_shifted():
    ratios = np.random.default_rng(0).uniform(0.2, 1.0, 80)
    assert forget_quality(ratios, ratios + 2.0) < 1e-20
    assert forget_quality(ratios + 2.0, ratios) < 1e-20


def test_bad_inputs_are_refused(facts, model):
    with pytest.raises(ValueError, match="both models"):
        forget_quality(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        forget_quality(np.array([np.nan]), np.array([1.0]))
    for first, second in ((0.5, [1.0, 2.0]), (np.ones((3, 1)), np.ones(3)), (np.ones((2, 2)),) * 2):
        with pytest.raises(ValueError, match="must be 1-D, one per fact"):  # were TypeErrors
            forget_quality(first, second)
    prompt_only = facts.facts.subset([0])
    prompt_only = type(prompt_only)(prompt_only.inputs, torch.full_like(prompt_only.targets, -100))
    with pytest.raises(ValueError, match="answer token"):
        answer_probabilities(model, prompt_only)
    for positions in (np.array([True, False, True]), [1.7]):  # not the facts 1, 0, 1 or 1
        with pytest.raises(TypeError, match="facts must be integers"):
            truth_ratios(model, facts, positions)
