"""Head-difference predictor: both fits exact on logistic regression, the reference cached per
model state, class-wise signs, refusals."""

import copy
from functools import partial

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.models import build_model
from tda.training import TrainConfig, train
from unlearn import DatamodelMatching, ForgetSplit, LoopConfig, UnlearningRequest
from unlearn.predictors import HeadDifferencePredictor

PENALTY = 0.05


def _split(data: Examples, forget) -> ForgetSplit:
    return ForgetSplit.of(data, UnlearningRequest(forget, train_size=len(data)))


def _ridge_gradient(data: Examples, weight, bias) -> float:
    """The largest gradient entry of cross-entropy on ``data`` plus the ridge, at ``(W, b)``."""
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(data.inputs @ weight.T + bias, data.targets)
    ridge = PENALTY / 2 * (weight.square().sum() + bias.square().sum())
    return max(float(g.abs().max()) for g in torch.autograd.grad(loss + ridge, [weight, bias]))


def _affine(inputs, logits):
    """``(W, b)`` with ``logits = inputs @ W.T + b`` (least squares; exact for affine logits)."""
    ones = torch.ones(len(inputs), 1, dtype=inputs.dtype)
    solution = torch.linalg.lstsq(torch.cat([inputs, ones], 1), logits).solution
    return solution[:-1].T, solution[-1]


@pytest.mark.parametrize("forget", [np.arange(0, 60, 4), "class 1"])
def test_on_logistic_regression_both_fits_are_exact_and_the_prediction_their_difference(
    convex, forget
):
    """The reference minimises the ridge objective on S, the request's fit on R, and the
    prediction is the original's layer moved by their difference."""
    model, data = convex
    if isinstance(forget, str):
        forget = np.flatnonzero(data.targets.numpy() == 1)
    split = _split(data, forget)
    predictor = HeadDifferencePredictor(data, penalty=PENALTY, max_iterations=500)
    logits = predictor.targets(model, data, np.arange(60), split, seed=0)
    reference_weight, reference_bias = predictor.reference(model)
    assert _ridge_gradient(data, reference_weight, reference_bias) < 1e-7
    weight, bias = _affine(data.inputs, logits)
    weight = weight - model.weight.detach() + reference_weight
    bias = bias - model.bias.detach() + reference_bias
    assert _ridge_gradient(data.subset(split.retain_indices), weight, bias) < 1e-7
    assert float((weight - reference_weight).abs().max()) > 1e-2  # the removal moved it


def test_the_reference_is_fitted_once_per_model_state(trained, mnist):
    predictor = HeadDifferencePredictor(mnist, reference_iterations=20)
    predictor.prepare_model(trained)
    first = predictor.reference(trained)
    assert predictor.reference(trained) is first
    with torch.no_grad():  # other features: another reference
        next(trained.parameters()).mul_(1.5)
    assert not torch.equal(predictor.reference(trained)[0], first[0])


def test_a_final_layer_without_bias_gets_no_offset(convex):
    _, data = convex
    model = build_model(lambda: torch.nn.Linear(5, 3, bias=False), 0, dtype=torch.float64)
    train(model, data, TrainConfig(epochs=5, batch_size=20))
    split = _split(data, np.flatnonzero(data.targets.numpy() == 1))
    logits = HeadDifferencePredictor(data, penalty=PENALTY).targets(
        model, data, np.arange(60), split, seed=0
    )
    weight = torch.linalg.lstsq(data.inputs, logits).solution.T
    torch.testing.assert_close(data.inputs @ weight.T, logits)  # linear: no offset
    assert float((weight - model.weight.detach()).abs().max()) > 1e-2


def test_forgetting_a_class_lowers_its_logit_and_raises_the_others_on_its_points(trained, mnist):
    forget = np.flatnonzero(mnist.train.targets.numpy() == 2)
    split = _split(mnist.train, forget)
    examples = mnist.train.subset(forget)
    predictor = HeadDifferencePredictor(mnist, penalty=1e-4)
    logits = predictor.targets(trained, examples, forget, split, seed=0)
    with torch.no_grad():
        original = trained(examples.inputs)
    others = [c for c in range(original.shape[1]) if c != 2]
    assert logits.shape == original.shape and logits.dtype == original.dtype
    assert float((logits[:, 2] - original[:, 2]).mean()) < -1
    rise = torch.logsumexp(logits[:, others], 1) - torch.logsumexp(original[:, others], 1)
    assert float(rise.mean()) > 0.1
    margins = HeadDifferencePredictor(mnist, penalty=1e-4, output="margin").targets(
        trained, examples, forget, split, seed=0
    )
    assert margins.shape == (len(forget),)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"penalty": 0.0}, "penalty must be positive"),
        ({"penalty": float("inf")}, "penalty must be positive"),
        ({"max_iterations": 0}, "max_iterations must be at least 1"),
        ({"reference_iterations": 0}, "reference_iterations must be at least 1"),
        ({"output": "probabilities"}, "output must be one of"),
    ],
)
def test_bad_settings_are_refused(mnist, settings, message):
    with pytest.raises(ValueError, match=message):
        HeadDifferencePredictor(mnist, **settings)


def test_a_request_on_another_training_set_is_refused(trained, mnist):
    other = mnist.train.subset(range(200))
    with pytest.raises(ValueError, match="scores 300 training examples but the request's"):
        HeadDifferencePredictor(mnist).check(trained, _split(other, [0]))


def test_an_original_at_the_ridge_optimum_on_s_gets_exact_retraining_and_dmm_reaches_it(convex):
    """With the original's layer the reference itself (logistic regression trained to the ridge
    optimum on S), the prediction is the ridge fit on R, i.e. exact retraining; full-batch DMM
    towards it reaches those outputs."""
    model, data = convex
    predictor = HeadDifferencePredictor(data, penalty=PENALTY, max_iterations=500)
    at_optimum = copy.deepcopy(model)
    with torch.no_grad():
        weight, bias = predictor.reference(model)
        at_optimum.weight.copy_(weight)
        at_optimum.bias.copy_(bias)
    split = _split(data, np.flatnonzero(data.targets.numpy() == 1))
    expected = predictor.targets(at_optimum, data, np.arange(60), split, seed=0)
    retrained_weight, retrained_bias = _affine(data.inputs, expected)
    retain = data.subset(split.retain_indices)
    assert _ridge_gradient(retain, retrained_weight, retrained_bias) < 1e-7
    loop = LoopConfig(epochs=3000, batch_size=60, optimizer=partial(torch.optim.SGD, lr=2.0))
    method = DatamodelMatching(predictor, loop, forget_copies=1, retain_multiple=100)
    unlearned = method.unlearn(copy.deepcopy(at_optimum), split, seed=0)
    with torch.no_grad():
        before, reached = at_optimum(data.inputs), unlearned(data.inputs)
    assert float((before - expected).abs().max()) > 0.1
    torch.testing.assert_close(reached, expected, rtol=0, atol=1e-4)
