"""Head-refit predictor: exact on logistic regression (whole layer or the absent classes' rows),
class-wise signs and shapes, refusals."""

import copy
from functools import partial

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.models import build_model
from tda.task import ClassificationTask
from tda.training import TrainConfig, train
from unlearn import DatamodelMatching, ForgetSplit, LoopConfig, UnlearningRequest
from unlearn.predictors import HeadRefitPredictor
from unlearn.predictors.head import final_layer, penultimate_features, refit_layer


def _split(train: Examples, forget) -> ForgetSplit:
    return ForgetSplit.of(train, UnlearningRequest(forget, train_size=len(train)))


def test_on_logistic_regression_it_is_the_exact_minimiser_of_the_refit(convex):
    """The layer is the whole model: the refit is retraining on R (anchored at the original);
    at its minimiser the objective's gradient vanishes."""
    model, data = convex
    penalty, forget = 0.05, np.arange(0, 60, 4)
    split = _split(data, forget)
    predictor = HeadRefitPredictor(data, penalty=penalty)
    logits = predictor.targets(model, data, np.arange(60), split, seed=0)
    solution = torch.linalg.lstsq(
        torch.cat([data.inputs, torch.ones(60, 1, dtype=torch.float64)], 1), logits
    ).solution  # logits are affine in the inputs: read W, b back
    weight, bias = solution[:5].T.clone().requires_grad_(), solution[5].clone().requires_grad_()
    retain = data.subset(split.retain_indices)
    loss = torch.nn.functional.cross_entropy(retain.inputs @ weight.T + bias, retain.targets)
    distance = (weight - model.weight).square().sum() + (bias - model.bias).square().sum()
    gradients = torch.autograd.grad(loss + penalty / 2 * distance, [weight, bias])
    assert max(float(g.abs().max()) for g in gradients) < 1e-7
    assert float((weight - model.weight).detach().abs().max()) > 1e-2  # it did move


def test_a_final_layer_without_bias_is_refitted_on_its_weights_alone(convex):
    """No bias to refit: the predicted logits are linear in the inputs (no offset) and the
    objective's gradient in the weights vanishes at the refit."""
    _, data = convex
    model = build_model(lambda: torch.nn.Linear(5, 3, bias=False), 0, dtype=torch.float64)
    train(model, data, TrainConfig(epochs=5, batch_size=20))
    penalty, split = 0.05, _split(data, np.arange(0, 60, 4))
    logits = HeadRefitPredictor(data, penalty=penalty).targets(
        model, data, np.arange(60), split, seed=0
    )
    weight = torch.linalg.lstsq(data.inputs, logits).solution.T.clone().requires_grad_()
    torch.testing.assert_close(data.inputs @ weight.detach().T, logits)  # no offset
    retain = data.subset(split.retain_indices)
    loss = torch.nn.functional.cross_entropy(retain.inputs @ weight.T, retain.targets)
    objective = loss + penalty / 2 * (weight - model.weight).square().sum()
    (gradient,) = torch.autograd.grad(objective, [weight])
    assert float(gradient.abs().max()) < 1e-7
    assert float((weight - model.weight).detach().abs().max()) > 1e-2


def _absent_rows_gradient(data, split, weight, bias, model, penalty, rows):
    """The gradient of cross-entropy on R plus the penalty on ``rows``, in those rows."""
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    retain = data.subset(split.retain_indices)
    loss = torch.nn.functional.cross_entropy(retain.inputs @ weight.T + bias, retain.targets)
    distance = (weight[rows] - model.weight[rows]).square().sum()
    distance = distance + (bias[rows] - model.bias[rows]).square().sum()
    gradients = torch.autograd.grad(loss + penalty / 2 * distance, [weight, bias])
    return gradients[0][rows], gradients[1][rows]


@pytest.mark.parametrize("forget_classes", [[1], [0, 2]])
def test_absent_rows_on_logistic_regression_are_the_exact_minimiser(convex, forget_classes):
    """Forgetting whole classes with rows="absent": their rows minimise the objective with the
    other rows held, which stay exactly the original's."""
    model, data = convex
    penalty = 0.05
    forget = np.flatnonzero(np.isin(data.targets.numpy(), forget_classes))
    split = _split(data, forget)
    predictor = HeadRefitPredictor(data, penalty=penalty, rows="absent")
    logits = predictor.targets(model, data, np.arange(60), split, seed=0)
    solution = torch.linalg.lstsq(
        torch.cat([data.inputs, torch.ones(60, 1, dtype=torch.float64)], 1), logits
    ).solution
    weight, bias = solution[:5].T, solution[5]
    held = [c for c in range(3) if c not in forget_classes]
    torch.testing.assert_close(weight[held], model.weight[held].detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(bias[held], model.bias[held].detach(), rtol=0, atol=1e-10)
    gradients = _absent_rows_gradient(data, split, weight, bias, model, penalty, forget_classes)
    assert max(float(g.abs().max()) for g in gradients) < 1e-8
    moved = (weight[forget_classes] - model.weight[forget_classes].detach()).abs().max()
    assert float(moved) > 1e-2


def test_absent_rows_of_a_layer_without_bias_are_refitted_on_their_weights(convex):
    _, data = convex
    model = build_model(lambda: torch.nn.Linear(5, 3, bias=False), 0, dtype=torch.float64)
    train(model, data, TrainConfig(epochs=5, batch_size=20))
    penalty, split = 0.05, _split(data, np.flatnonzero(data.targets.numpy() == 1))
    logits = HeadRefitPredictor(data, penalty=penalty, rows="absent").targets(
        model, data, np.arange(60), split, seed=0
    )
    weight = torch.linalg.lstsq(data.inputs, logits).solution.T.clone().requires_grad_()
    torch.testing.assert_close(data.inputs @ weight.detach().T, logits)  # no offset
    torch.testing.assert_close(weight[[0, 2]].detach(), model.weight[[0, 2]].detach())
    retain = data.subset(split.retain_indices)
    loss = torch.nn.functional.cross_entropy(retain.inputs @ weight.T, retain.targets)
    objective = loss + penalty / 2 * (weight[1] - model.weight[1]).square().sum()
    (gradient,) = torch.autograd.grad(objective, [weight])
    assert float(gradient[1].abs().max()) < 1e-8
    assert float((weight[1] - model.weight[1]).detach().abs().max()) > 1e-2


def test_absent_rows_with_a_tiny_penalty_lower_only_the_forgotten_class(trained, mnist):
    """At a penalty of 1e-11 (the MNIST-1D MLP's) Newton still converges: the forgotten class's
    logits fall far, every other logit is the original's."""
    forget = np.flatnonzero(mnist.train.targets.numpy() == 2)
    split = _split(mnist.train, forget)
    positions = np.concatenate([forget[:10], split.retain_indices[:10]])
    examples = mnist.train.subset(positions)
    logits = HeadRefitPredictor(mnist, penalty=1e-11, rows="absent").targets(
        trained, examples, positions, split, seed=0
    )
    with torch.no_grad():
        original = trained(examples.inputs)
    held = [c for c in range(original.shape[1]) if c != 2]
    torch.testing.assert_close(logits[:, held], original[:, held], rtol=0, atol=1e-4)
    assert bool((logits[:10, 2] < original[:10, 2] - 5).all())


def test_absent_rows_refuse_a_forget_set_that_removes_no_class(trained, mnist):
    predictor, split = HeadRefitPredictor(mnist, rows="absent"), _split(mnist.train, [0, 1, 2])
    with pytest.raises(ValueError, match="leaves an example of every class it touches"):
        predictor.check(trained, split)
    with pytest.raises(ValueError, match="leaves an example of every class it touches"):
        predictor.targets(trained, mnist.train.subset([0]), np.array([0]), split, seed=0)


def test_matching_it_on_logistic_regression_reaches_its_outputs(convex):
    """Logits are linear in θ and the matching set spans the inputs: full-batch descent on the
    matching loss reaches the refitted layer, whose outputs the predictor gave."""
    model, data = convex
    predictor = HeadRefitPredictor(data, penalty=0.05)
    split = _split(data, np.arange(0, 60, 4))
    loop = LoopConfig(epochs=3000, batch_size=60, optimizer=partial(torch.optim.SGD, lr=2.0))
    method = DatamodelMatching(predictor, loop, forget_copies=1, retain_multiple=100)
    expected = predictor.targets(model, data, np.arange(60), split, seed=0)
    unlearned = method.unlearn(copy.deepcopy(model), split, seed=0)  # it trains in place
    with torch.no_grad():
        before, reached = model(data.inputs), unlearned(data.inputs)
    assert float((before - expected).abs().max()) > 0.1  # the test can fail
    torch.testing.assert_close(reached, expected, rtol=0, atol=1e-4)


def test_forgetting_a_class_lowers_its_logits_and_margins(trained, mnist):
    forget = np.flatnonzero(mnist.train.targets.numpy() == 2)
    split = _split(mnist.train, forget)
    positions = forget[:20]
    examples = mnist.train.subset(positions)
    logits = HeadRefitPredictor(mnist, penalty=1e-4).targets(
        trained, examples, positions, split, seed=0
    )
    margins = HeadRefitPredictor(mnist, penalty=1e-4, output="margin").targets(
        trained, examples, positions, split, seed=0
    )
    with torch.no_grad():
        original = trained(examples.inputs)
    assert logits.shape == original.shape and margins.shape == (20,)
    assert logits.dtype == original.dtype
    assert bool((logits[:, 2] < original[:, 2] - 1).all())
    torch.testing.assert_close(margins, ClassificationTask().output(logits, examples.targets))


def test_a_layer_that_does_not_give_the_logits_is_refused(trained, mnist):
    split = _split(mnist.train, [0, 1])
    inner = [name for name, m in trained.named_modules() if isinstance(m, torch.nn.Linear)][0]
    predictor = HeadRefitPredictor(mnist, layer=inner)
    with pytest.raises(ValueError, match="does not give the model's logits: name the final one"):
        predictor.targets(trained, mnist.train.subset([0]), np.array([0]), split, seed=0)
    with pytest.raises(ValueError, match=r"layer '1' must be the model's final nn.Linear, found"):
        final_layer(trained, "1")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"penalty": 0.0}, "penalty must be positive"),
        ({"penalty": float("nan")}, "penalty must be positive"),
        ({"max_iterations": 0}, "max_iterations must be at least 1"),
        ({"output": "probabilities"}, "output must be one of"),
        ({"rows": "some"}, "rows must be one of"),
    ],
)
def test_bad_settings_are_refused(mnist, settings, message):
    with pytest.raises(ValueError, match=message):
        HeadRefitPredictor(mnist, **settings)


def test_a_request_on_another_training_set_is_refused(trained, mnist):
    other = mnist.train.subset(range(200))
    with pytest.raises(ValueError, match="scores 300 training examples but the request's"):
        HeadRefitPredictor(mnist).check(trained, _split(other, [0]))


def test_float32_evaluations_give_the_float64_fit(trained, mnist):
    """A float32 model's features carry float32 digits: evaluations in float32 reach the same
    minimiser as float64 ones (to well within the fit's own movement)."""
    _, layer = final_layer(trained)
    features = penultimate_features(trained, layer, mnist.train)
    anchor = (layer.weight.detach().double(), layer.bias.detach().double())
    fits = {
        dtype: refit_layer(features, mnist.train.targets, anchor, 1e-3, 500, dtype=dtype)
        for dtype in (torch.float32, torch.float64)
    }
    moved = float((fits[torch.float64][0] - anchor[0]).abs().max())
    gap = max(float((a - b).abs().max()) for a, b in zip(*fits.values(), strict=True))
    assert moved > 0.1 and gap < 1e-4 * moved
