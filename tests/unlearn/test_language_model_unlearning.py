"""Unlearning a language model's facts through the request API, judged TOFU-style."""

from functools import partial

import numpy as np
import pytest
import torch

from tda.data.facts import make_facts
from tda.fingerprint import model_fingerprint
from tda.models import build_model
from tda.task import LanguageModelingTask
from tda.training import TrainConfig, train
from tda.transformer import CausalTransformer
from unlearn import (
    WAGLE,
    FineTune,
    GradientAscent,
    GradientDifference,
    L1Sparse,
    LoopConfig,
    NegativePreferenceOptimization,
    Unlearner,
    UnlearningRequest,
    truth_ratios,
)
from unlearn.methods.base import ForgetSplit

TASK = LanguageModelingTask()


@pytest.fixture(scope="module")
def learned():
    """A tiny transformer that has memorised four facts about each of eight people."""
    facts = make_facts(people=8, seed=0)
    length = facts.facts.inputs.shape[1]
    model = build_model(partial(CausalTransformer, context=length, dim=16, heads=2, layers=1), 0)
    config = TrainConfig(epochs=80, batch_size=8, optimizer=partial(torch.optim.Adam, lr=1e-2))
    train(model, facts.facts, config, task=TASK)
    return model, facts


def _loop():
    return LoopConfig(epochs=5, optimizer=partial(torch.optim.Adam, lr=1e-2))


@pytest.mark.parametrize(
    "method",
    [
        GradientDifference(_loop(), task=TASK),
        NegativePreferenceOptimization(_loop(), task=TASK),
        WAGLE(base=GradientDifference(_loop(), task=TASK), task=TASK),
    ],
    ids=["graddiff", "npo", "wagle"],
)
def test_forgetting_people_loses_their_facts_far_more_than_the_others(learned, method):
    model, facts = learned
    forget = facts.facts_of([0, 1])
    retain = np.setdiff1d(np.arange(len(facts.facts)), forget)
    before = model_fingerprint(model)
    request = UnlearningRequest(tuple(forget.tolist()), len(facts.facts), seed=0)
    result = Unlearner(method).unlearn(model, facts.facts, request)
    assert model_fingerprint(model) == before  # the caller's model is untouched
    assert truth_ratios(model, facts, forget).mean() < 0.05  # it knew them
    forget_rise = (
        truth_ratios(result.model, facts, forget).mean() / truth_ratios(model, facts, forget).mean()
    )
    retain_rise = (
        truth_ratios(result.model, facts, retain).mean() / truth_ratios(model, facts, retain).mean()
    )
    assert forget_rise > 10 and retain_rise < forget_rise / 5
    assert result.audit.metrics["UA"] == 100.0  # no forgotten answer is reproduced exactly


def _one_sgd_step(lr: float) -> LoopConfig:
    """One full-batch SGD step (the sets below are smaller than the batch)."""
    return LoopConfig(epochs=1, batch_size=64, optimizer=partial(torch.optim.SGD, lr=lr))


@pytest.mark.parametrize(
    ("method", "source", "sign", "strength"),
    [
        (FineTune(_one_sgd_step(0.1), task=TASK), "retain", 1.0, 0.0),
        (GradientAscent(_one_sgd_step(0.1), task=TASK), "forget", -1.0, 0.0),
        (L1Sparse(_one_sgd_step(0.1), strength=1e-3, task=TASK), "retain", 1.0, 1e-3),
    ],
    ids=["ft", "ga", "l1_sparse"],
)
def test_ft_ga_and_l1_sparse_step_on_a_language_model_s_token_loss(method, source, sign, strength):
    """With ``task=LanguageModelingTask()`` FT, GA and ℓ1-sparse take the step of the mean token
    NLL (cross-entropy over a sequence's logits would not even run): one full-batch SGD step
    equals θ − η(±∇ mean ℓ + γ sign θ), in float64."""
    facts = make_facts(people=3, seed=0)
    length = facts.facts.inputs.shape[1]
    model = build_model(partial(CausalTransformer, context=length, dim=8, heads=2, layers=1), 0)
    model.double()
    split = ForgetSplit.of(facts.facts, UnlearningRequest(facts.facts_of([0]), len(facts.facts)))
    data = getattr(split, source)
    loss = sign * TASK.loss(model(data.inputs), data.targets).mean()
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    expected = [
        parameter - 0.1 * (gradient + strength * parameter.sign())
        for parameter, gradient in zip(model.parameters(), gradients, strict=True)
    ]
    unlearned = method.unlearn(model, split, seed=0)
    for actual, wanted in zip(unlearned.parameters(), expected, strict=True):
        torch.testing.assert_close(actual.detach(), wanted.detach(), rtol=1e-10, atol=1e-12)
