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
    GradientDifference,
    LoopConfig,
    NegativePreferenceOptimization,
    Unlearner,
    UnlearningRequest,
    truth_ratios,
)

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
