import copy
import dataclasses
import math
from functools import partial

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.fingerprint import model_fingerprint
from tda.models import LogisticRegression, build_model
from tda.task import ClassificationTask
from tda.training import TrainConfig, train
from tests.unlearn.reference import FACTORY, TRAIN_CONFIG
from unlearn import (
    ExactRetraining,
    FineTune,
    ForgetSplit,
    GradientAscent,
    GradientDifference,
    LoopConfig,
    RandomLabels,
    SalUn,
    UnlearningRequest,
    random_other_labels,
)

REQUEST = UnlearningRequest(list(range(0, 300, 7)), train_size=300, seed=4)


def _mean_loss(model, examples: Examples) -> float:
    with torch.no_grad():
        return float(ClassificationTask().loss(model(examples.inputs), examples.targets).mean())


def test_exact_retraining_equals_training_from_scratch_on_the_retain_set(mnist, trained):
    split = ForgetSplit.of(mnist.train, REQUEST)
    method = ExactRetraining(FACTORY, TRAIN_CONFIG, init_seed=0)
    retrained = method.unlearn(trained, split, seed=REQUEST.seed)
    direct = train(
        build_model(FACTORY, 0), mnist.train.subset(split.retain_indices), TRAIN_CONFIG, seed=4
    )
    assert model_fingerprint(retrained) == model_fingerprint(direct.model)
    assert model_fingerprint(retrained) != model_fingerprint(trained)


def test_exact_retraining_refuses_masks_and_other_architectures(mnist, trained):
    split = ForgetSplit.of(mnist.train, REQUEST)
    with pytest.raises(ValueError, match="takes no mask"):
        ExactRetraining(FACTORY).unlearn(trained, split, seed=0, mask={})
    with pytest.raises(ValueError, match="different architecture"):
        ExactRetraining(partial(FACTORY.func, 40, (8,), 10)).unlearn(trained, split, seed=0)


@pytest.mark.parametrize("training", [True, False])
def test_exact_retraining_returns_its_model_in_the_mode_it_was_given_as_fine_tuning_does(
    mnist, trained, training
):
    split = ForgetSplit.of(mnist.train, REQUEST)
    quick = TrainConfig(epochs=1, batch_size=64)
    retrained = ExactRetraining(FACTORY, quick).unlearn(trained.train(training), split, seed=0)
    tuned = FineTune(LoopConfig(epochs=1)).unlearn(trained.train(training), split, seed=0)
    assert retrained.training is tuned.training is training


def _max_distance(first, second) -> float:
    pairs = zip(first.parameters(), second.parameters(), strict=True)
    return max(float((a - b).detach().abs().max()) for a, b in pairs)


def _logistic_problem():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    weights = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    noise = 0.5 * torch.randn(40, 3, generator=generator, dtype=torch.float64)
    return Examples(inputs, (inputs @ weights + noise).argmax(dim=1))


def test_fine_tuning_to_convergence_matches_exact_retraining_on_l2_logistic_regression():
    r"""Objective mean CE + (λ/2)‖θ‖² is strongly convex: FT from θ_S and retraining on R from
    scratch must reach the same unique minimiser (full-batch gradient descent, float64)."""
    data, factory, decay = _logistic_problem(), partial(LogisticRegression, 5, 3), 0.1
    gradient_descent = partial(torch.optim.SGD, lr=1.0, weight_decay=decay)
    request = UnlearningRequest([0, 3, 11, 12, 30], train_size=40)
    split = ForgetSplit.of(data, request)
    full = TrainConfig(epochs=400, batch_size=40, optimizer=gradient_descent)
    original = train(build_model(factory, 0, torch.float64), data, full).model
    retrain = TrainConfig(epochs=400, batch_size=len(split.retain), optimizer=gradient_descent)
    oracle = ExactRetraining(factory, retrain, init_seed=1).unlearn(original, split, seed=0)
    loop = LoopConfig(epochs=400, batch_size=len(split.retain), optimizer=gradient_descent)
    tuned = FineTune(loop).unlearn(copy.deepcopy(original), split, seed=0)  # works in place
    distance_to_oracle = _max_distance(tuned, oracle)
    original_distance = _max_distance(original, oracle)
    assert distance_to_oracle < 1e-12
    assert original_distance > 1e-3  # removing 5 points moves the optimum: the test can fail


def test_random_labels_are_uniform_over_the_other_classes_and_seeded():
    targets = torch.arange(4).repeat(2000)
    labels = random_other_labels(targets, 4, seed=0)
    assert not (labels == targets).any()
    assert torch.equal(labels, random_other_labels(targets, 4, seed=0))
    assert not torch.equal(labels, random_other_labels(targets, 4, seed=1))
    counts = np.bincount(((labels - targets) % 4).numpy(), minlength=4)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] / len(targets) - 1 / 3) < 0.03)
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_other_labels(targets, 1, seed=0)


@pytest.mark.parametrize("outside", [4, 7, -1, -100])
def test_random_labels_refuse_a_target_outside_the_classes_instead_of_wrapping_it(outside):
    """(y + u) mod C would turn target 4 (or -1, or an ignored position) into a real class."""
    targets = torch.tensor([0, 3, outside, 1])
    with pytest.raises(ValueError, match=f"target {outside} of example 2 is outside .* 4 classes"):
        random_other_labels(targets, 4, seed=0)


@pytest.mark.parametrize("fractional", [0.5, 2.5, float("nan")])
def test_random_labels_refuse_a_fractional_float_target(fractional):
    """0.5 passed the range check and came back as the label (0.5 + u) mod C, no class at all."""
    targets = torch.tensor([0.0, 3.0, fractional, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=f"target {fractional} of example 2 is outside .* 4 "):
        random_other_labels(targets, 4, seed=0)
    whole = random_other_labels(torch.tensor([0.0, 3.0, 2.0, 1.0]), 4, seed=0)  # whole floats pass
    assert torch.equal(whole, random_other_labels(torch.tensor([0, 3, 2, 1]), 4, seed=0).float())


@pytest.mark.parametrize("shape", [(3, 3), (2, 5)])
def test_random_labels_refuse_sequence_targets(shape):
    """Token targets [n, T] were shifted per column (n = T) or failed inside torch (n != T)."""
    targets = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"one class target per example.*{shape[0]}, {shape[1]}"):
        random_other_labels(targets, 4, seed=0)


def _gradient_step(model, examples: Examples, lr: float) -> None:
    """One plain gradient-descent step on the mean cross-entropy over ``examples``."""
    loss = ClassificationTask().loss(model(examples.inputs), examples.targets).mean()
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for parameter, gradient in zip(model.parameters(), gradients, strict=True):
            parameter.sub_(lr * gradient)


@pytest.mark.parametrize("batches", ["separate", "mixed"])
def test_random_labels_take_the_steps_their_batches_describe(batches):
    r"""Full batches, plain GD, one epoch: ``separate`` is a step on relabelled F's mean loss then
    one on R's; ``mixed`` is one step on the mean loss over relabelled F ∪ R (float64)."""
    data, factory, lr = _logistic_problem(), partial(LogisticRegression, 5, 3), 0.5
    split = ForgetSplit.of(data, UnlearningRequest([0, 3, 11, 12, 30], train_size=40))
    original = build_model(factory, 0, torch.float64)
    loop = LoopConfig(epochs=1, batch_size=40, optimizer=partial(torch.optim.SGD, lr=lr))
    method = RandomLabels(loop, batches=batches)
    unlearned = method.unlearn(copy.deepcopy(original), split, seed=3)
    relabelled = Examples(split.forget.inputs, random_other_labels(split.forget.targets, 3, 3))
    expected = copy.deepcopy(original)
    if batches == "separate":
        _gradient_step(expected, relabelled, lr)
        _gradient_step(expected, split.retain, lr)
    else:
        both = Examples(
            torch.cat([relabelled.inputs, split.retain.inputs]),
            torch.cat([relabelled.targets, split.retain.targets]),
        )
        _gradient_step(expected, both, lr)
    assert _max_distance(unlearned, expected) < 1e-12
    assert _max_distance(unlearned, original) > 1e-3


@pytest.mark.parametrize("method", [RandomLabels, SalUn])
def test_random_label_methods_refuse_unknown_batches(method):
    with pytest.raises(ValueError, match="batches must be one of"):
        method(batches="interleaved")


@pytest.mark.parametrize(
    "method",
    [
        GradientAscent(LoopConfig(epochs=3, optimizer=partial(torch.optim.SGD, lr=0.05))),
        GradientDifference(LoopConfig(epochs=3, batch_size=16), retain_weight=0.5),
        RandomLabels(LoopConfig(epochs=3, batch_size=16)),
        RandomLabels(LoopConfig(epochs=3, batch_size=16), batches="mixed"),
    ],
    ids=["GA", "GradDiff", "RL", "RL mixed"],
)
def test_forgetting_methods_raise_the_loss_on_the_forget_set(mnist, trained, method):
    split = ForgetSplit.of(mnist.train, REQUEST)
    before = _mean_loss(trained, split.forget)
    unlearned = method.unlearn(trained, split, seed=0)
    assert _mean_loss(unlearned, split.forget) > before + 0.05


def _scrambled(split: ForgetSplit, side: str) -> ForgetSplit:
    examples = getattr(split, side)
    noise = Examples(torch.randn_like(examples.inputs), examples.targets.flip(0))
    return dataclasses.replace(split, **{side: noise})


@pytest.mark.parametrize(
    ("method", "unread"),
    [(FineTune(LoopConfig(epochs=2)), "forget"), (GradientAscent(), "retain")],
    ids=["FT reads only R", "GA reads only F"],
)
def test_methods_read_only_the_data_their_objective_names(mnist, trained, method, unread):
    split = ForgetSplit.of(mnist.train, REQUEST)
    first = method.unlearn(copy.deepcopy(trained), split, seed=0)
    second = method.unlearn(copy.deepcopy(trained), _scrambled(split, unread), seed=0)
    read = "retain" if unread == "forget" else "forget"
    third = method.unlearn(copy.deepcopy(trained), _scrambled(split, read), seed=0)
    assert model_fingerprint(first) == model_fingerprint(second) != model_fingerprint(third)


def test_gradient_difference_refuses_a_negative_retain_weight():
    with pytest.raises(ValueError, match="retain_weight must be non-negative"):
        GradientDifference(retain_weight=-1.0)


@pytest.mark.parametrize("weight", [math.nan, math.inf])
def test_gradient_difference_refuses_a_retain_weight_that_is_not_finite(weight):
    # accepted, it made every loss NaN / infinite: a "diverged" run, which tuning skips silently
    with pytest.raises(ValueError, match="retain_weight must be non-negative and finite"):
        GradientDifference(retain_weight=weight)
