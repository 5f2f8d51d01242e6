"""Source against unrolled gradient descent on linear regression, where it is exact.

Ground truth: with per-example weights w in the mean loss (1/n) Σ w_i ℓ_i, full-batch gradient
descent is unrolled in closed form and differentiated with ``torch.func.jacrev``:
τ_true[q, i] = ∂f(x_q; θ_K(w)) / ∂w_i at w = 1 (the library's sign: > 0 when down-weighting i
lowers f). A finite difference of real down-weighted re-runs checks that derivative.

Source assumes the curvature H and each example's gradient constant within a segment. For linear
regression H is constant; started at the unweighted optimum θ* the gradients are constant too, so
there Source (with the gradient-descent propagator) must be exact. From any other start the
checkpoint gradients lag the steps they stand for by one step: an O(η) error, tested as such.
"""

from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from functools import partial

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tda.checkpoints import load_checkpoint, save_checkpoint
from tda.data import Examples
from tda.grads import NonFiniteGradientError
from tda.methods.source import (
    DenseEigenbasis,
    EKFACEigenbasis,
    ExplicitEigenbasis,
    Source,
    plan_segments,
    unrolled_decay,
    unrolled_gain,
)
from tda.models import MLP, build_model
from tda.training import TrainConfig, train


@dataclass(frozen=True)
class SquaredError:
    """Regression: f = the prediction, ℓ = ½ (f − y)²."""

    def output(self, logits, target):
        return logits[..., 0]

    def loss(self, logits, target):
        return 0.5 * (logits[..., 0] - target) ** 2

    def out_to_loss(self, logits, target):
        return target - logits[..., 0]


TASK = SquaredError()


def factory():
    return build_model(lambda: nn.Linear(3, 1), seed=0, dtype=torch.float64)


def design(examples):
    return torch.cat([examples.inputs, torch.ones(len(examples), 1, dtype=torch.float64)], dim=1)


def least_squares(train_set):
    return torch.linalg.lstsq(design(train_set), train_set.targets.unsqueeze(1)).solution[:, 0]


def unrolled_outputs(theta0, train_set, queries, rates):
    """w ↦ f(queries; θ_K(w)) for full-batch gradient descent on (1/n) Σ w_i ½ (x̃_iᵀθ − y_i)²."""
    features, query_features = design(train_set), design(queries)

    def outputs(weights):
        theta = theta0
        for rate in rates:
            residual = features @ theta - train_set.targets
            theta = theta - rate * features.T @ (weights * residual) / len(train_set)
        return query_features @ theta

    return outputs


def true_effect(theta0, train_set, queries, rates):
    outputs = unrolled_outputs(theta0, train_set, queries, rates)
    return torch.func.jacrev(outputs)(torch.ones(len(train_set), dtype=torch.float64))


def influence_function(theta, train_set, queries):
    """Converged IF: −(1/n) ∇f(x)ᵀ H⁻¹ ∇ℓ(z), in closed form."""
    features = design(train_set)
    hessian = features.T @ features / len(train_set)
    train_gradients = features * (features @ theta - train_set.targets).unsqueeze(1)
    return -design(queries) @ torch.linalg.solve(hessian, train_gradients.T) / len(train_set)


def trained(tmp_path, train_set, theta0, config):
    model = factory()
    with torch.no_grad():
        model.weight.copy_(theta0[:3].unsqueeze(0))
        model.bias.copy_(theta0[3:])
    return train(model, train_set, config, task=TASK, checkpoint_dir=tmp_path).checkpoints


def relative_error(estimate, truth):
    return float((estimate - truth).norm() / truth.norm())


def sgd(rate, epochs, checkpoints, train_set, scheduler=None):
    return TrainConfig(
        epochs=epochs,
        batch_size=len(train_set),  # full-batch gradient descent
        optimizer=partial(torch.optim.SGD, lr=rate),
        scheduler=scheduler,
        checkpoints=checkpoints,
    )


def test_ground_truth_is_the_effect_of_down_weighting(data):
    train_set, queries = data
    theta0, rates, epsilon = least_squares(train_set), [0.3] * 6, 1e-6
    outputs = unrolled_outputs(theta0, train_set, queries, rates)
    ones = torch.ones(len(train_set), dtype=torch.float64)
    for index in (0, 5):
        down = ones.clone()
        down[index] -= epsilon
        finite = (outputs(ones) - outputs(down)) / epsilon
        truth = true_effect(theta0, train_set, queries, rates)[:, index]
        np.testing.assert_allclose(finite.numpy(), truth.numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])  # equal for linear models
def test_one_segment_reproduces_gradient_descent_where_the_influence_function_does_not(
    tmp_path, data, curvature
):
    """From the unweighted optimum θ*, H and ∇ℓ(z) stay constant along the whole trajectory, the
    two assumptions Source makes, so (with the gradient-descent propagator) it must be exact; a
    converged influence function ignores that only K = 6 steps were taken."""
    train_set, queries = data
    theta0 = least_squares(train_set)
    checkpoints = trained(tmp_path, train_set, theta0, sgd(0.3, 6, 2, train_set))
    truth = true_effect(theta0, train_set, queries, [0.3] * 6)
    basis = ExplicitEigenbasis(curvature)
    source = Source(segments=1, task=TASK, eigenbasis=basis, discrete=True)
    scores = source.fit(factory, checkpoints, train_set).score(queries)
    assert scores.shape == (3, 8) and scores.dtype == torch.float64
    assert relative_error(scores, truth) < 1e-9
    assert relative_error(influence_function(theta0, train_set, queries), truth) > 0.5


@pytest.mark.parametrize("rate", [0.003, 0.03])
def test_the_exponential_propagator_is_first_order_in_the_step_size(tmp_path, data, rate):
    """The paper's e^{−ηKh} differs from gradient descent's (1 − ηh)^K by a relative O(ηh / 2)."""
    train_set, queries = data
    theta0 = least_squares(train_set)
    checkpoints = trained(tmp_path, train_set, theta0, sgd(rate, 10, 1, train_set))
    truth = true_effect(theta0, train_set, queries, [rate] * 10)
    scores = Source(segments=1, task=TASK).fit(factory, checkpoints, train_set).score(queries)
    largest = float(torch.linalg.eigvalsh(design(train_set).T @ design(train_set))[-1]) / 8
    assert relative_error(scores, truth) < rate * largest


def two_phases():
    """A scheduler: the optimiser's rate for 5 epochs, then a tenth of it."""
    return partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda e: 1.0 if e < 5 else 0.1)


def test_two_learning_rate_phases_are_exact_with_a_segment_per_phase(tmp_path, data):
    """From θ*, 5 steps at η = 0.3 then 5 at 0.03: exact with two segments; one segment with the
    mean rate is not (it would be in continuous time, where only Σ ηK matters)."""
    train_set, queries = data
    theta0 = least_squares(train_set)
    config = sgd(0.3, 10, 2, train_set, two_phases())
    checkpoints = trained(tmp_path, train_set, theta0, config)
    assert [c.segment_learning_rate for c in checkpoints] == pytest.approx([0.3, 0.03])
    truth = true_effect(theta0, train_set, queries, [0.3] * 5 + [0.03] * 5)
    two = Source(segments=2, task=TASK, discrete=True).fit(factory, checkpoints, train_set)
    one = Source(segments=1, task=TASK, discrete=True).fit(factory, checkpoints, train_set)
    assert relative_error(two.score(queries), truth) < 1e-9
    assert relative_error(one.score(queries), truth) > 5e-3


def test_from_a_generic_start_the_error_is_first_order_in_the_step_size(tmp_path, data):
    """Away from θ*, ∇ℓ(z) changes every step and each checkpoint's gradient (taken at the end of
    the steps it closes) is off by one step: an O(η) error that halves with η. The converged
    influence function stays far off."""
    train_set, queries = data
    theta0 = torch.tensor([0.5, 0.5, -1.0, 0.0], dtype=torch.float64)
    errors = []
    for rate in (0.002, 0.001):
        config = sgd(rate, 8, 8, train_set)
        checkpoints = trained(tmp_path / str(rate), train_set, theta0, config)
        truth = true_effect(theta0, train_set, queries, [rate] * 8)
        source = Source(segments=8, task=TASK, discrete=True).fit(factory, checkpoints, train_set)
        errors.append(relative_error(source.score(queries), truth))
    assert errors[1] < 0.005 and 1.8 < errors[0] / errors[1] < 2.2
    converged = influence_function(least_squares(train_set), train_set, queries)
    assert relative_error(converged, truth) > 1


def test_two_phases_from_a_generic_start_within_tolerance(tmp_path, data):
    """5 steps at η = 0.03, 5 at 0.003, a checkpoint per step, two segments: within 10%."""
    train_set, queries = data
    theta0 = torch.tensor([0.5, 0.5, -1.0, 0.0], dtype=torch.float64)
    checkpoints = trained(tmp_path, train_set, theta0, sgd(0.03, 10, 10, train_set, two_phases()))
    truth = true_effect(theta0, train_set, queries, [0.03] * 5 + [0.003] * 5)
    source = Source(segments=2, task=TASK, discrete=True).fit(factory, checkpoints, train_set)
    assert relative_error(source.score(queries), truth) < 0.1


@dataclass
class GivenCurvatures:
    """An eigenbasis provider handing out fixed matrices, one per segment in training order."""

    matrices: list
    handed: list = field(default_factory=list)

    def decompose(self, model, task, train, *, parameters=None):
        matrix = self.matrices[len(self.handed)]
        self.handed.append(matrix)
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        return DenseEigenbasis(eigenvalues, eigenvectors)


def formula(checkpoints, plan, matrices, train_set, queries, damping):
    """−(1/n) Σ_l ∇f(x)ᵀ P_L⋯P_{l+1} (I − P_l)(H_l + λ)⁻¹ ḡ_l with dense matrix exponentials."""
    total, carried = 0.0, design(queries)  # ∇f(x) = x̃ for a linear model
    for segment, matrix in reversed(list(zip(plan, matrices, strict=True))):
        damped = matrix + damping * torch.eye(4, dtype=torch.float64)
        decay = torch.linalg.matrix_exp(-segment.learning_rate * segment.steps * damped)
        gain = torch.linalg.solve(damped, torch.eye(4, dtype=torch.float64) - decay)
        mean_gradient = 0.0
        for checkpoint in segment.checkpoints:
            state = load_file(str(checkpoint.path))
            theta = torch.cat([state["weight"][0], state["bias"]])
            residual = design(train_set) @ theta - train_set.targets
            weight = checkpoint.segment_steps / segment.steps
            mean_gradient = mean_gradient + weight * design(train_set) * residual.unsqueeze(1)
        total = total - carried @ gain @ mean_gradient.T / len(train_set)
        carried = carried @ decay
    return total


def test_segments_compose_as_the_closed_form_with_non_commuting_curvatures(tmp_path, data):
    """Three segments (3, 3, 4 checkpoints) with different curvature per segment and damping."""
    train_set, queries = data
    theta0 = torch.tensor([0.5, 0.5, -1.0, 0.0], dtype=torch.float64)
    config = sgd(0.2, 10, 10, train_set, two_phases())
    checkpoints = trained(tmp_path, train_set, theta0, config)
    generator = torch.Generator().manual_seed(3)
    factors = [torch.randn(4, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    matrices = [f @ f.T / 4 for f in factors]
    source = Source(segments=3, damping=0.1, task=TASK, eigenbasis=GivenCurvatures(matrices))
    scores = source.fit(factory, checkpoints, train_set).score(queries)
    assert [len(s.checkpoints) for s in source.plan] == [3, 3, 4]
    expected = formula(checkpoints, source.plan, matrices, train_set, queries, 0.1)
    np.testing.assert_allclose(scores.numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)


def test_many_steps_reduce_to_the_influence_function(tmp_path, data):
    """One segment with ηK h ≫ 1 (records of 10⁶ steps at θ*): e^{−ηKH} = 0 and Source is IF."""
    train_set, queries = data
    theta = least_squares(train_set)
    model = factory()
    with torch.no_grad():
        model.weight.copy_(theta[:3].unsqueeze(0))
        model.bias.copy_(theta[3:])
    position = dict(step=10**6, epoch=1, learning_rate=0.1, segment_learning_rate=0.1)
    checkpoint = save_checkpoint(tmp_path, "end", model, segment_steps=10**6, **position)
    scores = Source(segments=1, task=TASK).fit(factory, [checkpoint], train_set).score(queries)
    expected = influence_function(theta, train_set, queries)
    np.testing.assert_allclose(scores.numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)


def reference_gain(eigenvalue: float, rate: float, steps: int, discrete: bool) -> float:
    """The gain in 60-digit decimal arithmetic (ηK at h = 0)."""
    with localcontext() as context:
        context.prec = 60
        h, eta = Decimal(eigenvalue), Decimal(rate)
        if abs(eta * steps * h) < Decimal("1e-40"):  # the limit, beyond 60 digits
            return float(eta * steps)
        decay = (1 - eta * h) ** steps if discrete else (-eta * steps * h).exp()
        return float((1 - decay) / h)


@pytest.mark.parametrize("discrete", [False, True])
def test_spectral_functions_are_accurate_near_zero_and_far_from_it(discrete):
    values = [-0.5, -1e-13, 0.0, 1e-300, 1e-9, 1e-4, 0.3, 2.6, 4.0, 9.0]  # ηh up to 1.8
    eigenvalues = torch.tensor(values, dtype=torch.float64)
    gain = unrolled_gain(eigenvalues, 0.2, 7, discrete)
    expected = [reference_gain(h, 0.2, 7, discrete) for h in values]
    np.testing.assert_allclose(gain.numpy(), expected, rtol=1e-13)
    decay = unrolled_decay(eigenvalues, 0.2, 7, discrete)
    powers = (1 - 0.2 * eigenvalues) ** 7 if discrete else torch.exp(-1.4 * eigenvalues)
    np.testing.assert_allclose(decay.numpy(), powers.numpy(), rtol=1e-13)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A 4-5-3 float64 MLP trained by SGD on 15 examples, 3 checkpoints."""
    generator = torch.Generator().manual_seed(2)
    data = Examples(
        torch.randn(15, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 3, (15,), generator=generator),
    )
    config = TrainConfig(
        epochs=6, batch_size=5, optimizer=partial(torch.optim.SGD, lr=0.3), checkpoints=3
    )
    result = train(mlp(), data, config, checkpoint_dir=tmp_path_factory.mktemp("classifier"))
    return result.checkpoints, data


def mlp():
    return build_model(lambda: MLP(4, (5,), 3), seed=0, dtype=torch.float64)


def test_a_training_example_pushes_its_own_margin_up(classifier):
    """One checkpoint: τ(z)_z = (1 − p)/n ∇fᵀ φ(G) ∇f > 0 for the PSD Gauss-Newton matrix G."""
    checkpoints, data = classifier
    scores = Source(segments=1).fit(mlp, checkpoints[-1:], data).score(data)
    assert bool((torch.diagonal(scores) > 0).all())


def test_scores_do_not_depend_on_chunk_size(classifier):
    checkpoints, data = classifier
    source = Source(segments=2, damping=0.05, eigenbasis=ExplicitEigenbasis("hessian"))
    reference = source.fit(mlp, checkpoints, data).score(data.subset(range(4)))
    source = Source(2, 0.05, eigenbasis=ExplicitEigenbasis("hessian", chunk_size=4), chunk_size=4)
    other = source.fit(mlp, checkpoints, data).score(data.subset(range(4)))
    np.testing.assert_allclose(other.numpy(), reference.numpy(), rtol=1e-10, atol=1e-13)


def test_ekfac_eigenbasis_is_the_block_diagonal_matrix_it_represents(classifier):
    """Source over EK-FAC equals Source over the dense matrix EK-FAC stands for (plumbing), and
    tracks the exact Gauss-Newton Source on this MLP."""
    checkpoints, data = classifier
    provider = EKFACEigenbasis()
    ekfac = Source(segments=2, eigenbasis=provider).fit(mlp, checkpoints, data)
    matrices = []
    for segment in ekfac.plan:
        model = load_checkpoint(segment.checkpoints[-1], mlp())
        basis = provider.decompose(model, ekfac.task, data, parameters=None)
        identity = torch.eye(43, dtype=torch.float64)
        matrices.append(basis.apply(lambda h: h, identity))
    dense = Source(segments=2, eigenbasis=GivenCurvatures(matrices)).fit(mlp, checkpoints, data)
    queries = data.subset(range(5))
    scores = ekfac.score(queries)
    np.testing.assert_allclose(scores.numpy(), dense.score(queries).numpy(), rtol=1e-9, atol=1e-12)
    exact = Source(segments=2).fit(mlp, checkpoints, data).score(queries)
    assert float(torch.corrcoef(torch.stack([scores.flatten(), exact.flatten()]))[0, 1]) > 0.9


def test_bad_input_is_reported(classifier):
    checkpoints, data = classifier
    message = (
        "asked for 3 segments but only 2 checkpoints were saved; save more checkpoints "
        r"\(TrainConfig\(checkpoints=...\)\) or use fewer segments"
    )
    with pytest.raises(ValueError, match=message):
        Source(segments=3).fit(mlp, checkpoints[:2], data)
    with pytest.raises(ValueError, match="training order"):
        plan_segments(checkpoints[::-1], 1)
    with pytest.raises(RuntimeError, match="call fit"):
        Source(segments=1).score(data)
    negative = GivenCurvatures([torch.diag(torch.full((43,), -500.0, dtype=torch.float64))])
    source = Source(segments=1, eigenbasis=negative).fit(mlp, checkpoints, data)
    with pytest.raises(FloatingPointError, match="negative eigenvalues"):
        source.score(data)
    steep = GivenCurvatures([100.0 * torch.eye(43, dtype=torch.float64)])  # η h = 30 > 2
    source = Source(segments=1, eigenbasis=steep, discrete=True).fit(mlp, checkpoints[-1:], data)
    with pytest.raises(ValueError, match="diverges"):
        source.score(data)


@pytest.mark.parametrize(
    "eigenbasis",
    [ExplicitEigenbasis(), EKFACEigenbasis(sampled_labels=False), EKFACEigenbasis()],
    ids=["explicit", "ekfac", "ekfac_sampled"],
)
def test_a_target_outside_the_classes_is_named(classifier, eigenbasis):
    """It turns the curvature NaN: ``eigh`` accepted it at fit and score then blamed "large
    negative eigenvalues". (Sampled labels keep the curvature finite: the loss gradient is not.)"""
    checkpoints, data = classifier
    targets = data.targets.clone()
    targets[4] = 7  # 3 classes
    with pytest.raises(NonFiniteGradientError):
        source = Source(eigenbasis=eigenbasis).fit(mlp, checkpoints, Examples(data.inputs, targets))
        source.score(data.subset(range(3)))


def test_fit_and_score_read_raw_arrays_as_their_examples(classifier):
    """(X, y) arrays failed at fit with "'tuple' object has no attribute 'to'"."""
    checkpoints, data = classifier
    queries = data.subset(range(3))
    expected = Source(segments=2).fit(mlp, checkpoints, data).score(queries)
    raw = Source(segments=2).fit(mlp, checkpoints, (data.inputs.numpy(), data.targets.numpy()))
    scores = raw.score((queries.inputs.numpy(), queries.targets.numpy()))
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)


def test_inputs_holding_nan_are_refused_at_fit_naming_the_example(classifier):
    """Source took them into the curvature and blamed "large negative eigenvalues" at score."""
    checkpoints, data = classifier
    inputs = data.inputs.clone()
    inputs[3, 1] = float("nan")
    with pytest.raises(ValueError, match="the input of example 3 holds nan"):
        Source().fit(mlp, checkpoints, Examples(inputs, data.targets))
