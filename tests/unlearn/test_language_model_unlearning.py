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
    ExactRetraining,
    FineTune,
    GradientAscent,
    GradientDifference,
    L1Sparse,
    LoopConfig,
    MagnitudePruning,
    NegativePreferenceOptimization,
    PruneThenUnlearn,
    Unlearner,
    UnlearningRequest,
    magnitude_mask,
    prunable_parameters,
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


def _tiny_language_model(people: int = 3):
    """Facts about ``people`` people and an untrained 1-layer transformer factory for them."""
    facts = make_facts(people=people, seed=0)
    length = facts.facts.inputs.shape[1]
    return facts, partial(CausalTransformer, context=length, dim=8, heads=2, layers=1)


def test_exact_retraining_of_a_language_model_is_training_from_scratch_on_the_retain_set():
    """With ``task=LanguageModelingTask()`` the oracle is bitwise ``tda.train`` on R with the same
    initialisation, configuration, task and seed (cross-entropy over a sequence's logits failed
    with "loss became nan")."""
    facts, factory = _tiny_language_model()
    config = TrainConfig(epochs=2, batch_size=4, optimizer=partial(torch.optim.Adam, lr=1e-2))
    original = train(build_model(factory, 0), facts.facts, config, task=TASK).model
    forget = facts.facts_of([0])
    request = UnlearningRequest(tuple(forget.tolist()), len(facts.facts), seed=5)
    method = ExactRetraining(factory, config, init_seed=1, task=TASK)
    retrained = method.unlearn(original, ForgetSplit.of(facts.facts, request), seed=request.seed)
    retain = facts.facts.subset(np.setdiff1d(np.arange(len(facts.facts)), forget))
    direct = train(build_model(factory, 1), retain, config, seed=5, task=TASK).model
    assert model_fingerprint(retrained) == model_fingerprint(direct)
    assert model_fingerprint(retrained) != model_fingerprint(original)
    audited = Unlearner(method, compute_metrics=False).unlearn(original, facts.facts, request)
    assert audited.audit.model_fingerprint_after == model_fingerprint(direct)


def test_pruning_retrains_a_language_model_on_its_token_loss_inside_the_mask():
    """One full-batch SGD step of pruning's retraining with ``task=LanguageModelingTask()`` is
    θ − η∇ mean token NLL on the kept weights, and +0.0 on the pruned ones, in float64."""
    facts, factory = _tiny_language_model()
    model = build_model(factory, 0, dtype=torch.float64)
    expected_mask = magnitude_mask(model, 0.5)
    pruned = {name: p.detach().clone() for name, p in model.named_parameters()}
    for name, kept in expected_mask.items():
        pruned[name][~kept] = 0.0
    by_hand = build_model(factory, 0, dtype=torch.float64)
    by_hand.load_state_dict(pruned, strict=False)
    loss = TASK.loss(by_hand(facts.facts.inputs), facts.facts.targets).mean()
    gradients = dict(
        zip(pruned, torch.autograd.grad(loss, list(by_hand.parameters())), strict=True)
    )
    pruning = MagnitudePruning(0.5, retrain=_one_sgd_step(0.1), task=TASK)
    mask = pruning.prune(model, facts.facts, seed=0)
    assert all(torch.equal(mask[name], expected_mask[name]) for name in expected_mask)
    for name, parameter in model.named_parameters():
        kept = mask.get(name, torch.ones_like(parameter, dtype=torch.bool))
        expected = torch.where(kept, pruned[name] - 0.1 * gradients[name], 0.0)
        torch.testing.assert_close(parameter.detach(), expected, rtol=1e-10, atol=1e-12)
        assert (parameter.detach()[~kept].view(torch.int64) == 0).all()  # +0.0 exactly


def test_prune_then_unlearn_with_iterative_retraining_runs_on_a_language_model():
    """The review's failing case, through the request API: IMP (two rounds, each retrained on R)
    then FT inside the mask, all on the token loss; the pruned weights end exactly +0.0."""
    facts, factory = _tiny_language_model()
    config = TrainConfig(epochs=2, batch_size=8, optimizer=partial(torch.optim.Adam, lr=1e-2))
    original = train(build_model(factory, 0), facts.facts, config, task=TASK).model
    retrain = LoopConfig(epochs=1, batch_size=8, optimizer=partial(torch.optim.Adam, lr=1e-2))
    pruning = MagnitudePruning(0.3, rounds=2, retrain=retrain, task=TASK)
    method = PruneThenUnlearn(pruning, FineTune(LoopConfig(epochs=1), task=TASK))
    request = UnlearningRequest([0, 1], len(facts.facts), seed=0)
    result = Unlearner(method, compute_metrics=False).unlearn(original, facts.facts, request)
    weights = [result.model.get_parameter(name) for name in prunable_parameters(original)]
    total = sum(weight.numel() for weight in weights)
    zeros = sum(int((weight.detach().view(torch.int32) == 0).sum()) for weight in weights)
    assert zeros == round(0.3 * total)  # what IMP pruned, and no kept weight landed on +0.0
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
