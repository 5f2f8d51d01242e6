"""DMM with exact matching: the head predictors' layer edit written into the model (their
predicted outputs on every point, the matching loss at zero), exact retraining on logistic
regression, the other layers untouched, refusals."""

import copy

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.models import build_model
from tda.training import TrainConfig, train
from tests.unlearn.reference import FACTORY
from unlearn import DatamodelMatching, ForgetSplit, OraclePredictor, Unlearner, UnlearningRequest
from unlearn.predictors import (
    HeadDifferencePredictor,
    HeadRefitPredictor,
    LayerEdit,
    apply_layer_edit,
)

PENALTY = 0.05


def _request(data: Examples, forget) -> UnlearningRequest:
    return UnlearningRequest(forget, train_size=len(data))


def _class(data: Examples, label: int) -> np.ndarray:
    return np.flatnonzero(data.targets.numpy() == label)


def test_on_logistic_regression_exact_matching_is_exact_retraining(convex):
    """The layer is the whole model: the head refit's edit minimises the anchored ridge
    objective on R, and the unlearned model is that minimiser; the caller's model is kept."""
    model, data = convex
    before = copy.deepcopy(model.state_dict())
    request = _request(data, np.arange(0, 60, 4))
    predictor = HeadRefitPredictor(data, penalty=PENALTY, max_iterations=500)
    method = DatamodelMatching(predictor, matching="exact")
    unlearned = Unlearner(method, compute_metrics=False).unlearn(model, data, request).model
    retain = data.subset(request.retain_indices())
    weight = unlearned.weight.detach().clone().requires_grad_()
    bias = unlearned.bias.detach().clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(retain.inputs @ weight.T + bias, retain.targets)
    distance = (weight - model.weight).square().sum() + (bias - model.bias).square().sum()
    gradients = torch.autograd.grad(loss + PENALTY / 2 * distance, [weight, bias])
    assert max(float(g.abs().max()) for g in gradients) < 1e-7
    assert float((weight - model.weight).detach().abs().max()) > 1e-2  # it did move
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


@pytest.mark.parametrize("predictor", ["difference", "refit", "absent rows"])
def test_the_unlearned_model_gives_the_predicted_outputs_and_keeps_its_features(
    trained, mnist, predictor
):
    """On the MLP: every training point's logits are the predictor's targets (so the matching
    loss is zero everywhere) and every layer but the last is bitwise unchanged."""
    forget = _class(mnist.train, 2)
    split = ForgetSplit.of(mnist.train, _request(mnist.train, forget))
    predictor = {
        "difference": HeadDifferencePredictor(mnist, penalty=1e-3),
        "refit": HeadRefitPredictor(mnist, penalty=1e-3),
        "absent rows": HeadRefitPredictor(mnist, penalty=1e-3, rows="absent"),
    }[predictor]
    positions = np.arange(len(mnist.train))
    expected = predictor.targets(trained, mnist.train, positions, split, seed=0)
    unlearned = DatamodelMatching(predictor, matching="exact").unlearn(
        copy.deepcopy(trained), split, seed=0
    )
    with torch.no_grad():
        reached, original = unlearned(mnist.train.inputs), trained(mnist.train.inputs)
    assert float((original - expected).abs().max()) > 1.0
    torch.testing.assert_close(reached, expected, rtol=0, atol=1e-5)
    last = [name for name, _ in trained.named_parameters()][-2:]
    pairs = zip(trained.named_parameters(), unlearned.parameters(), strict=True)
    for (name, value), after in pairs:
        assert torch.equal(value, after) != (name in last)


def test_a_final_layer_without_bias_gets_its_weight_alone(convex):
    _, data = convex
    model = build_model(lambda: torch.nn.Linear(5, 3, bias=False), 0, dtype=torch.float64)
    train(model, data, TrainConfig(epochs=5, batch_size=20))
    split = ForgetSplit.of(data, _request(data, _class(data, 1)))
    predictor = HeadDifferencePredictor(data, penalty=PENALTY)
    expected = predictor.targets(model, data, np.arange(60), split, seed=0)
    unlearned = DatamodelMatching(predictor, matching="exact").unlearn(
        copy.deepcopy(model), split, seed=0
    )
    assert unlearned.bias is None
    torch.testing.assert_close(unlearned(data.inputs).detach(), expected)


def test_a_mask_that_freezes_the_final_layer_is_refused(trained, mnist):
    split = ForgetSplit.of(mnist.train, _request(mnist.train, _class(mnist.train, 2)))
    name, weight = [(n, p) for n, p in trained.named_parameters()][-2]
    mask = {name: torch.ones_like(weight, dtype=torch.bool)}
    mask[name][0, 0] = False
    method = DatamodelMatching(HeadDifferencePredictor(mnist, penalty=1e-3), matching="exact")
    with pytest.raises(ValueError, match=f"{name} is frozen"):
        method.unlearn(copy.deepcopy(trained), split, seed=0, mask=mask)
    first = next(iter(trained.named_parameters()))[0]  # a mask on another layer is kept
    frozen = {first: torch.zeros_like(trained.get_parameter(first), dtype=torch.bool)}
    unlearned = method.unlearn(copy.deepcopy(trained), split, seed=0, mask=frozen)
    assert torch.equal(unlearned.get_parameter(first), trained.get_parameter(first))


def test_bad_matching_settings_are_refused(mnist, tmp_path):
    with pytest.raises(ValueError, match="matching must be one of"):
        DatamodelMatching(HeadDifferencePredictor(mnist), matching="closed_form")
    oracle = OraclePredictor(FACTORY, mnist, TrainConfig(), 0, 1, root=tmp_path)
    with pytest.raises(ValueError, match="OraclePredictor has no layer_edit"):
        DatamodelMatching(oracle, matching="exact")


def test_a_non_finite_edit_is_refused_and_the_model_kept(trained):
    name, weight = [(n, p) for n, p in trained.named_parameters()][-2]
    before = copy.deepcopy(trained.state_dict())
    bad = torch.full_like(weight, float("nan"), dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="non-finite"):
        apply_layer_edit(trained, LayerEdit(name.rsplit(".", 1)[0], bad, None))
    for key, value in trained.state_dict().items():
        assert torch.equal(value, before[key])
