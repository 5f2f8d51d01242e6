"""K-FAC and EK-FAC against explicit float64 oracles from autograd and per-sample gradients."""

import json
import math
from dataclasses import replace
from functools import partial

import pytest
import torch
from torch import nn

from tda.curvature import kronecker
from tda.curvature.kfac import RELATIVE_DAMPING, EKFACSolver, KFACSolver
from tda.curvature.kronecker import sample_targets
from tda.data import Examples
from tda.grads import NonFiniteGradientError, per_sample_gradients, select_parameters
from tda.models import MLP, CNN1d, LogisticRegression, build_model
from tda.task import IGNORE_INDEX, ClassificationTask, LanguageModelingTask
from tda.transformer import CausalTransformer
from tests.conftest import TiedAutoencoder

TASK = ClassificationTask()
SOLVERS = (KFACSolver, EKFACSolver)


class Reordered(nn.Module):
    """Parameters registered head first, so model order differs from the forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(5, 3)
        self.body = nn.Linear(4, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))


class Sequence(nn.Module):
    """Linear layers on ``[b, T, in]``; ``mix`` is called twice, once before an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 5)
        self.mix = nn.Linear(5, 5, bias=False)
        self.head = nn.Linear(5 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu_(self.mix(torch.tanh(self.embed(x))))
        return self.head(self.mix(hidden).flatten(1))


class Pooled(nn.Module):
    """Logits ``sum_t (W x_t + b)``: every position gets the same output gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).sum(1)


class Convolutions(nn.Module):
    """Conv1d then Conv2d: an even kernel, dilation, stride and non-zero padding modes."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv1d(1, 2, 4, padding="same", dilation=2, padding_mode="replicate")
        self.second = nn.Conv2d(1, 2, (2, 3), stride=(1, 2), padding=1, padding_mode="reflect")
        self.head = nn.Linear(2 * 3 * 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.first(x.unsqueeze(1)))  # [b, 2, 7]
        return self.head(torch.relu(self.second(hidden.unsqueeze(1))).flatten(1))


class WholeInputConv(nn.Module):
    """A Conv1d whose kernel covers its whole input: logistic regression as a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.unsqueeze(1)).squeeze(2)


def _build(factory):
    return build_model(factory, seed=0, dtype=torch.float64)


def _examples(n: int, shape: tuple[int, ...], seed: int = 0) -> Examples:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    return Examples(inputs, torch.randint(0, 3, (n,), generator=generator))


def _layer_gradients(model, gradients, base) -> torch.Tensor:
    """``[n, o, c]`` blocks ``[grad W | grad b]`` cut from per-sample gradients by name."""
    offsets, offset = {}, 0
    for name, parameter in select_parameters(model, None).items():
        offsets[name] = (offset, parameter)
        offset += parameter.numel()
    parts = []
    for name in (base.weight, base.bias):
        if name is not None:
            start, parameter = offsets[name]
            block = gradients[:, start : start + parameter.numel()]
            parts.append(block.reshape(len(gradients), parameter.shape[0], -1))
    return torch.cat(parts, dim=2)


def _dense_block(base) -> torch.Tensor:
    """The layer's approximate curvature ``(Q_S kron Q_A) diag(vec L) (Q_S kron Q_A)^T``."""
    basis = torch.kron(base.output_basis, base.input_basis)
    return basis @ torch.diag(base.eigenvalues.reshape(-1)) @ basis.T


def _gradients_of(model, data, base, sampled_labels=False):
    """``[n, o, c]`` per-sample loss gradient blocks of one layer, at sampled or true labels."""
    targets = sample_targets(model(data.inputs), seed=0) if sampled_labels else data.targets
    gradients = per_sample_gradients(model, TASK, data.inputs, targets, function="loss")
    return _layer_gradients(model, gradients, base)


def _hessian(model, data, task=TASK) -> torch.Tensor:
    """Exact Hessian of the mean loss over the flat parameters (model order)."""
    named = list(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def mean_loss(vector):
        values, offset = {}, 0
        for name, p in named:
            values[name] = vector[offset : offset + p.numel()].reshape(p.shape)
            offset += p.numel()
        logits = torch.func.functional_call(model, values, (data.inputs,))
        return task.loss(logits, data.targets).mean()

    return torch.autograd.functional.hessian(mean_loss, flat)


@pytest.mark.parametrize("layer", [lambda: LogisticRegression(4, 3), WholeInputConv])
@pytest.mark.parametrize("solver_class", SOLVERS)
def test_exact_where_the_kronecker_factorisation_is_exact(solver_class, layer):
    # Logistic regression at W = 0, b = 0: every softmax is uniform (p = 1/C), so the output
    # gradient g = p - e_y depends on the label only, never on the input a. The design pairs each
    # of 5 inputs with each of the 3 labels, making a and g independent over the data set, so
    # the empirical Fisher E[g g^T kron a a^T] = E[g g^T] kron E[a a^T] = S kron A exactly. And
    # E_y[(p - e_y)(p - e_y)^T] = diag(p) - p p^T is the softmax's Hessian, so this Fisher is
    # also the Gauss-Newton matrix and the Hessian (the model is linear in its parameters).
    # The convolution is the same model, its single patch the whole input.
    model = _build(layer)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    inputs = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = Examples(inputs.repeat_interleave(3, 0), torch.arange(3).repeat(5))
    damping = 0.05
    solver = solver_class(damping=damping, sampled_labels=False).fit(model, TASK, data)
    size = 15
    expected = torch.linalg.inv(_hessian(model, data) + damping * torch.eye(size).double())
    actual = solver.solve(torch.eye(size, dtype=torch.float64))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_kfac_factors_follow_their_definitions(tiny_mlp, tiny_data):
    # A = mean a a^T over inputs [a, 1]; S = mean g g^T, with g the bias gradient (T = 1).
    solver = KFACSolver(sampled_labels=False).fit(tiny_mlp, TASK, tiny_data)
    layer_inputs = [tiny_data.inputs, torch.relu(tiny_mlp[0](tiny_data.inputs)).detach()]
    for base, inputs in zip(solver.layers, layer_inputs, strict=True):
        a = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=torch.float64)], dim=1)
        options = {"function": "loss", "parameters": [base.bias]}
        g = per_sample_gradients(tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets, **options)
        expected = torch.kron(g.T @ g / len(g), a.T @ a / len(a))
        torch.testing.assert_close(_dense_block(base), expected, rtol=1e-9, atol=1e-12)


def test_positions_are_summed_in_s_and_averaged_in_a():
    # y = sum_t (W x_t + b): every position's output gradient is g = p - e_y, so
    # S = (1/N) sum_n T g g^T and A = (1/(N T)) sum_{n,t} a a^T (K-FAC "expand").
    model, data = _build(Pooled), _examples(12, (5, 4))
    solver = KFACSolver(sampled_labels=False).fit(model, TASK, data)
    a = torch.cat([data.inputs, torch.ones(12, 5, 1, dtype=torch.float64)], dim=2).reshape(60, 5)
    probabilities = torch.softmax(model(data.inputs), dim=1).detach()
    g = probabilities - nn.functional.one_hot(data.targets, 3)
    expected = torch.kron(5 * g.T @ g / 12, a.T @ a / 60)
    torch.testing.assert_close(_dense_block(solver.layers[0]), expected, rtol=1e-9, atol=1e-12)


MODELS = {
    "mlp": (lambda: MLP(6, (8,), 3), (6,)),
    "reordered": (Reordered, (4,)),
    "sequence": (Sequence, (3, 4)),
    "cnn": (lambda: CNN1d(length=8, channels=2, num_classes=3), (8,)),
    "convolutions": (Convolutions, (7,)),
}


@pytest.mark.parametrize(
    ("model_name", "parameters", "sampled_labels"),
    [
        ("mlp", None, False),
        ("mlp", None, True),
        ("mlp", ["0.bias", "2.weight"], False),
        ("reordered", None, True),
        ("sequence", None, False),
        ("cnn", None, False),
        ("cnn", ["features.2.weight", "features.2.bias", "head.weight"], True),
        ("convolutions", None, False),
    ],
)
def test_ekfac_eigenvalues_are_the_fisher_diagonal_in_the_kronecker_basis(
    model_name, parameters, sampled_labels, monkeypatch
):
    monkeypatch.setattr(kronecker, "_MAX_BLOCK_ELEMENTS", 60)  # several sub-batches of [b, o, c]
    factory, shape = MODELS[model_name]
    model, data = _build(factory), _examples(20, shape)
    options = {"sampled_labels": sampled_labels, "chunk_size": 7}
    ekfac = EKFACSolver(**options).fit(model, TASK, data, parameters=parameters)
    kfac = KFACSolver(**options).fit(model, TASK, data, parameters=parameters)
    for base, kfac_base in zip(ekfac.layers, kfac.layers, strict=True):
        assert torch.equal(base.output_basis, kfac_base.output_basis)
        assert torch.equal(base.input_basis, kfac_base.input_basis)
        blocks = _gradients_of(model, data, base, sampled_labels)
        rotated = base.output_basis.T @ blocks @ base.input_basis
        torch.testing.assert_close(base.eigenvalues, (rotated**2).mean(0), rtol=1e-9, atol=1e-14)


def test_ekfac_is_closer_to_the_fisher_than_kfac(tiny_mlp):
    # EK-FAC's eigenvalues are the diagonal of each Fisher block in the shared Kronecker basis,
    # the Frobenius-closest choice in that basis, so no layer may be further than K-FAC's.
    # (Their damped inverses differ by under 1% on this model: the basis dominates the error.)
    data = _examples(40, (6,))
    gradients = per_sample_gradients(tiny_mlp, TASK, data.inputs, data.targets, function="loss")
    errors = {}
    for solver_class in SOLVERS:
        solver = solver_class(sampled_labels=False).fit(tiny_mlp, TASK, data)
        errors[solver_class] = []
        for base in solver.layers:
            blocks = _layer_gradients(tiny_mlp, gradients, base).reshape(40, -1)
            fisher = blocks.T @ blocks / 40
            errors[solver_class].append(
                float(torch.linalg.matrix_norm(_dense_block(base) - fisher))
            )
    for ekfac, kfac in zip(errors[EKFACSolver], errors[KFACSolver], strict=True):
        assert ekfac <= kfac + 1e-12
    assert math.hypot(*errors[EKFACSolver]) < 0.95 * math.hypot(*errors[KFACSolver])


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_a_single_block_maps_to_its_own_layer(solver_class):
    model, data = _build(Reordered), _examples(20, (4,))
    solver = solver_class(damping=0.1).fit(model, TASK, data)
    names = list(select_parameters(model))
    assert names == ["head.weight", "head.bias", "body.weight"]
    assert [(b.module, b.weight, b.bias, b.offset) for b in solver.layers] == [
        ("head", "head.weight", "head.bias", 0),
        ("body", "body.weight", None, 18),
    ]
    for base in solver.layers:
        stop = base.offset + base.parameter_count
        vector = torch.zeros(1, 38, dtype=torch.float64)
        vector[:, base.offset : stop] = torch.randn(base.parameter_count, dtype=torch.float64)
        result = solver.solve(vector)
        assert torch.count_nonzero(result[:, : base.offset]) == 0
        assert torch.count_nonzero(result[:, stop:]) == 0
        assert torch.all(result[:, base.offset : stop].abs() > 0)


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_default_damping_is_a_tenth_of_the_mean_eigenvalue(solver_class, tiny_mlp, tiny_data):
    solver = solver_class(sampled_labels=False).fit(tiny_mlp, TASK, tiny_data)
    mean = sum(float(b.eigenvalues.sum()) for b in solver.layers) / 83
    assert solver.mean_eigenvalue == pytest.approx(mean, rel=1e-12)
    assert solver.damping == pytest.approx(RELATIVE_DAMPING * mean, rel=1e-12)
    if solver_class is EKFACSolver:  # the refitted eigenvalues keep the Fisher's trace
        inputs, targets = tiny_data.inputs, tiny_data.targets
        gradients = per_sample_gradients(tiny_mlp, TASK, inputs, targets, function="loss")
        trace = float((gradients**2).sum()) / len(gradients)
        assert solver.mean_eigenvalue == pytest.approx(trace / 83, rel=1e-10)
    undamped = replace(solver, damping=1.0).solve(torch.ones(1, 83, dtype=torch.float64))
    assert not torch.allclose(undamped, solver.solve(torch.ones(1, 83, dtype=torch.float64)))


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_per_layer_damping_inverts_each_block_with_its_own_damping(
    solver_class, tiny_mlp, tiny_data
):
    solver = solver_class(per_layer=True).fit(tiny_mlp, TASK, tiny_data)
    assert solver.damping is None and solver.config()["per_layer"] is True
    vectors = torch.randn(3, 83, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = solver.solve(vectors)
    dampings = solver.layer_dampings
    for base, damping in zip(solver.layers, dampings, strict=True):
        assert damping == pytest.approx(RELATIVE_DAMPING * float(base.eigenvalues.mean()))
        stop = base.offset + base.parameter_count
        block = _dense_block(base) + damping * torch.eye(base.parameter_count, dtype=torch.float64)
        # the block is over [weight | bias] as [o, c] row-major; the flat vector is weight, bias
        order = _flat_order(base)
        expected = torch.linalg.solve(block, vectors[:, base.offset : stop][:, order].T).T
        torch.testing.assert_close(result[:, base.offset : stop][:, order], expected)
    assert dampings[0] != pytest.approx(dampings[1], rel=0.1)  # the layers' scales differ
    assert solver_class().fit(tiny_mlp, TASK, tiny_data).layer_dampings[0] == pytest.approx(
        RELATIVE_DAMPING * solver.mean_eigenvalue
    )


@pytest.mark.parametrize("per_layer", [False, True])
def test_relative_damping_sets_the_fraction_of_the_mean_eigenvalue(per_layer, tiny_mlp, tiny_data):
    default = EKFACSolver(per_layer=per_layer).fit(tiny_mlp, TASK, tiny_data)
    smaller = EKFACSolver(per_layer=per_layer, relative_damping=0.001).fit(
        tiny_mlp, TASK, tiny_data
    )
    for low, high in zip(smaller.layer_dampings, default.layer_dampings, strict=True):
        assert low == pytest.approx(high * 0.001 / RELATIVE_DAMPING, rel=1e-12)
    assert smaller.config()["relative_damping"] == 0.001
    vectors = torch.ones(1, 83, dtype=torch.float64)
    if not per_layer:  # the same solve as the absolute damping it resolves to
        fixed = replace(default, damping=smaller.layer_dampings[0])
        torch.testing.assert_close(smaller.solve(vectors), fixed.solve(vectors))


def _flat_order(base) -> torch.Tensor:
    """Positions in the flat ``[weight | bias]`` slice of the block's row-major ``[o, c]``."""
    o, c = base.eigenvalues.shape
    inputs = c - (base.bias is not None)
    index = torch.arange(o * c).reshape(o, c)
    weight, bias = index[:, :inputs].reshape(-1), index[:, inputs:].reshape(-1)
    flat_of_block = torch.cat([weight, bias])  # flat position j holds block entry flat_of_block[j]
    return torch.argsort(flat_of_block)


def test_sampled_labels_follow_the_softmax_and_the_seed():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]], dtype=torch.float64).repeat(40_000, 1)
    labels = sample_targets(logits, seed=3)
    frequencies = torch.bincount(labels, minlength=4).double() / len(labels)
    probabilities = torch.softmax(logits[0], dim=0)
    bound = 5 * torch.sqrt(probabilities * (1 - probabilities) / len(labels))
    assert torch.all((frequencies - probabilities).abs() < bound)
    assert torch.equal(labels, sample_targets(logits, seed=3))
    assert not torch.equal(labels, sample_targets(logits, seed=4))


def test_sequence_labels_are_sampled_at_every_position_and_ignored_ones_stay_ignored():
    probabilities = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=torch.float64)
    logits = probabilities.log().repeat(20_000, 1, 1)  # [n, T = 2, V = 3]
    labels = sample_targets(logits, seed=1)
    assert labels.shape == (20_000, 2)
    for position in range(2):
        frequencies = torch.bincount(labels[:, position], minlength=3).double() / 20_000
        torch.testing.assert_close(frequencies, probabilities[position], rtol=0, atol=0.015)
    targets = torch.tensor([[IGNORE_INDEX, 2]]).repeat(20_000, 1)
    value = kronecker._loss_value(
        LanguageModelingTask(), targets, kronecker._uniforms((20_000, 2), 1)
    )
    expected = -logits[:, 1].gather(1, labels[:, 1:]).squeeze(1)  # only position 1 counts
    torch.testing.assert_close(value(logits), expected, rtol=1e-12, atol=0)


def test_sampled_fisher_of_a_language_model_does_not_depend_on_chunks():
    model = CausalTransformer(vocab_size=5, context=4, dim=4, heads=2, layers=1, hidden=4).double()
    generator = torch.Generator().manual_seed(0)
    data = Examples(torch.randint(0, 5, (9, 4), generator=generator), torch.randint(0, 5, (9, 4)))
    names = kronecker.kronecker_parameters(model)
    fit = lambda size: EKFACSolver(sampled_labels=True, chunk_size=size).fit(  # noqa: E731
        model, LanguageModelingTask(), data, parameters=names
    )
    vectors = torch.randn(2, sum(dict(model.named_parameters())[n].numel() for n in names))
    torch.testing.assert_close(fit(2).solve(vectors.double()), fit(64).solve(vectors.double()))


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_seed_determinism_and_chunk_independence(solver_class, tiny_mlp, tiny_data):
    sampled = {"sampled_labels": True}
    first = solver_class(seed=5, **sampled).fit(tiny_mlp, TASK, tiny_data)
    again = solver_class(seed=5, **sampled).fit(tiny_mlp, TASK, tiny_data)
    chunked = solver_class(seed=5, chunk_size=3, **sampled).fit(tiny_mlp, TASK, tiny_data)
    other = solver_class(seed=6, **sampled).fit(tiny_mlp, TASK, tiny_data)
    for base, same, small in zip(first.layers, again.layers, chunked.layers, strict=True):
        assert torch.equal(base.eigenvalues, same.eigenvalues)
        torch.testing.assert_close(small.eigenvalues, base.eigenvalues, rtol=1e-10, atol=1e-14)
    assert not torch.equal(first.layers[1].eigenvalues, other.layers[1].eigenvalues)
    config = first.config()
    assert json.loads(json.dumps(config)) == config
    assert config["solver"] == ("ekfac" if solver_class is EKFACSolver else "kfac")


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_default_fisher_is_the_empirical_one_and_ignores_the_seed(
    solver_class, tiny_mlp, tiny_data
):
    # The default (chosen by held-out LDS in benchmarks/bench_fisher.py) uses the training
    # labels: the same eigenvalues as sampled_labels=False, whatever the seed.
    default = solver_class(seed=5).fit(tiny_mlp, TASK, tiny_data)
    empirical = solver_class(sampled_labels=False, seed=6).fit(tiny_mlp, TASK, tiny_data)
    sampled = solver_class(sampled_labels=True, seed=5).fit(tiny_mlp, TASK, tiny_data)
    assert default.config()["sampled_labels"] is False
    for base, same, other in zip(default.layers, empirical.layers, sampled.layers, strict=True):
        assert torch.equal(base.eigenvalues, same.eigenvalues)
        assert not torch.allclose(base.eigenvalues, other.eigenvalues)


def test_float32_vectors_stay_float32(tiny_data):
    model = build_model(lambda: MLP(6, (8,), 3), seed=0)
    data = Examples(tiny_data.inputs.float(), tiny_data.targets)
    solver = EKFACSolver().fit(model, TASK, data)
    result = solver.solve(torch.ones(2, 83))
    assert result.dtype == torch.float32 and torch.isfinite(result).all()


def test_conv_kfac_factors_follow_their_definitions():
    # KFC: A = mean of the patches' [x_pad[t s + j d], 1] a a^T, built here by explicit loops,
    # over the (example, position) pairs whose output gradient g is nonzero (with two channels
    # before a ReLU, some positions have both off: they enter no gradient); S = (1/N) sum_{n,t}
    # g g^T with g the loss gradient w.r.t. the conv output.
    model, data = _build(lambda: CNN1d(length=8, channels=2, num_classes=3)), _examples(10, (8,))
    solver = KFACSolver(sampled_labels=False).fit(
        model, TASK, data, parameters=["features.2.weight", "features.2.bias"]
    )
    conv = model.features[2]  # Conv1d(2, 2, 5, stride=2, padding=2)
    hidden = model.features[:2](data.inputs.unsqueeze(1)).detach()  # [10, 2, 8]
    padded = nn.functional.pad(hidden, (2, 2))
    a = torch.tensor(
        [
            [*(padded[n, c, 2 * t + j] for c in range(2) for j in range(5)), 1.0]
            for n in range(10)
            for t in range(4)
        ],
        dtype=torch.float64,
    )
    output = conv(hidden).detach().requires_grad_()
    logits = model.head(model.features[3:](output).flatten(1))
    (g,) = torch.autograd.grad(TASK.loss(logits, data.targets).sum(), output)
    g = g.transpose(1, 2).reshape(40, 2)
    a = a[(g != 0).any(1)]
    assert 0 < len(a) < 40
    expected = torch.kron(g.T @ g / 10, a.T @ a / len(a))
    torch.testing.assert_close(_dense_block(solver.layers[0]), expected, rtol=1e-9, atol=1e-12)


def test_unsupported_layers_need_leaving_out():
    class Grouped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 3, groups=2)
            self.norm = nn.BatchNorm1d(2)
            self.head = nn.Linear(2 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.conv(x.reshape(-1, 2, 6))).flatten(1))

    model = build_model(Grouped, seed=0)
    data = Examples(torch.randn(6, 12), torch.randint(0, 3, (6,)))
    pattern = (
        r"'conv\.weight' \(Conv1d with groups=2 'conv'\).*'norm\.weight' \(BatchNorm1d 'norm'\)"
    )
    with pytest.raises(ValueError, match=pattern):
        KFACSolver().fit(model, TASK, data)
    with pytest.raises(ValueError, match="groups=1 nn.Conv1d"):
        EKFACSolver().fit(model, TASK, data)
    solver = EKFACSolver().fit(model, TASK, data, parameters=["head.weight", "head.bias"])
    assert solver.solve(torch.ones(1, 3 * 9)).shape == (1, 27)  # head: 3 x (8 + 1)


def test_layers_the_hooks_never_see_are_rejected(tiny_data):
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = _build(Unused)
    with pytest.raises(ValueError, match="'spare' reached the loss"):
        KFACSolver().fit(model, TASK, tiny_data)
    assert (
        KFACSolver().fit(model, TASK, tiny_data, parameters=["used.weight"]).layers[0].bias is None
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"damping": -1.0},
        {"damping": float("nan")},
        {"damping": "0.1"},
        {"chunk_size": 0},
        {"seed": 1.5},
        {"sampled_labels": "yes"},
        {"per_layer": 1},
        {"per_layer": True, "damping": 0.1},
        {"relative_damping": -0.1},
        {"relative_damping": "0.1"},
    ],
)
def test_invalid_settings_are_rejected(settings):
    with pytest.raises(ValueError):
        KFACSolver(**settings)


def test_solve_checks_its_inputs(tiny_mlp, tiny_data):
    with pytest.raises(RuntimeError, match="fit"):
        KFACSolver().solve(torch.ones(1, 83))
    solver = KFACSolver(damping=0.0, sampled_labels=False)
    fitted = solver.fit(tiny_mlp, TASK, tiny_data)
    with pytest.raises(ValueError, match=r"\[q, 83\]"):
        fitted.solve(torch.ones(83, dtype=torch.float64))
    dead = Examples(torch.cat([tiny_data.inputs[:, :5], torch.zeros(20, 1)], 1), tiny_data.targets)
    singular = solver.fit(tiny_mlp, TASK, dead)  # input 6 is always 0: A is singular
    with pytest.raises(ValueError, match="singular"):
        singular.solve(torch.ones(1, 83, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty"):
        solver.fit(tiny_mlp, TASK, tiny_data.subset([]))


def test_kronecker_parameters_are_the_linear_weights_and_biases_in_model_order():
    model = CausalTransformer(vocab_size=5, context=4, dim=4, heads=2, layers=1, hidden=4)
    expected = [
        f"{module}.{kind}"
        for module, layer in model.named_modules()
        if isinstance(layer, torch.nn.Linear)
        for kind in ("weight", "bias")
    ]
    assert kronecker.kronecker_parameters(model) == expected  # embeddings and LayerNorms left out
    with pytest.raises(ValueError, match="no nn.Linear"):
        kronecker.kronecker_parameters(torch.nn.LayerNorm(3))


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5])
def test_fitting_eigenbases_refuses_a_chunk_size_below_one(tiny_mlp, tiny_data, chunk_size):
    """Source's EKFACEigenbasis reaches it unchecked: -1 was reported as a layer never called."""
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        kronecker.fit_kronecker_eigenbases(tiny_mlp, TASK, tiny_data, chunk_size=chunk_size)


def test_sampled_fisher_of_a_language_model_estimates_its_gauss_newton_matrix():
    # The loss averages T_c token cross-entropies, so each example's Gauss-Newton block is
    # J^T H J with H = (1/T_c) blockdiag(diag p_t - p_t p_t^T); sampled-label gradients of that
    # loss have E[grad grad^T] = GN / T_c, so their Fisher must be rescaled (T_c = 1 and 3 here).
    model = CausalTransformer(vocab_size=5, context=4, dim=4, heads=2, layers=1, hidden=4).double()
    inputs = torch.tensor([[1, 2, 3, 0], [4, 0, 2, 1]])
    targets = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX], [IGNORE_INDEX, 2, 4, 1]])
    task, names = LanguageModelingTask(), ["head.weight", "head.bias"]
    weight, bias = model.head.weight.detach(), model.head.bias.detach()

    def logits_of(flat, row):
        values = {"head.weight": flat[: weight.numel()].view_as(weight), "head.bias": flat[-5:]}
        return torch.func.functional_call(model, values, (inputs[row : row + 1],))[0]

    flat = torch.cat([weight.reshape(-1), bias])
    gauss_newton = 0.0
    for row in range(2):
        jacobian = torch.autograd.functional.jacobian(partial(logits_of, row=row), flat)
        logits = logits_of(flat, row).detach()
        inner = torch.autograd.functional.hessian(
            lambda o, shape=logits.shape, y=targets[row]: task.loss(o.view(shape), y),
            logits.reshape(-1),
        )
        jacobian = jacobian.reshape(-1, len(flat))
        gauss_newton = gauss_newton + jacobian.T @ inner @ jacobian / 2
    copies = 3000
    data = Examples(inputs.repeat(copies, 1), targets.repeat(copies, 1))
    (base,) = (
        EKFACSolver(sampled_labels=True, seed=0, chunk_size=1000)
        .fit(model, task, data, parameters=names)
        .layers
    )
    # the eigenvalues are the block's diagonal in its eigenbasis, so they sum to its trace
    torch.testing.assert_close(base.eigenvalues.sum(), gauss_newton.trace(), rtol=0.02, atol=0)


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_exact_where_ignored_positions_surround_the_counted_one(solver_class):
    # The logistic-regression design of the exact test above, read as a sequence: a Linear layer
    # at W = 0, b = 0 on 3 positions, one of which is counted (the middle one, its input paired
    # with each label); the others (a prompt before it, padding after it) have targets
    # IGNORE_INDEX and inputs of their own. Their output gradients are exactly zero, so they enter
    # no per-example gradient and the Fisher, Gauss-Newton matrix and Hessian are those of the
    # counted positions alone: S kron A with A over the counted inputs, not over all positions.
    model = _build(lambda: nn.Linear(4, 3))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    generator = torch.Generator().manual_seed(0)
    counted = torch.randn(5, 4, generator=generator, dtype=torch.float64).repeat_interleave(3, 0)
    ignored = 3 * torch.randn(15, 2, 4, generator=generator, dtype=torch.float64) + 1
    inputs = torch.stack([ignored[:, 0], counted, ignored[:, 1]], dim=1)  # [15, 3, 4]
    targets = torch.full((15, 3), IGNORE_INDEX)
    targets[:, 1] = torch.arange(3).repeat(5)
    data = Examples(inputs, targets)
    damping = 0.05
    solver = solver_class(damping=damping).fit(model, LanguageModelingTask(), data)
    expected = torch.linalg.inv(
        _hessian(model, data, LanguageModelingTask()) + damping * torch.eye(15).double()
    )
    actual = solver.solve(torch.eye(15, dtype=torch.float64))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def _facts_like(length: int) -> Examples:
    """Prompt, then a counted answer, then padding to ``length`` (answers end at position 5)."""
    inputs = torch.tensor([[1, 2, 3, 4, 2, 1], [3, 1, 4, 4, 2, 3], [2, 2, 1, 3, 4, 1]])
    targets = torch.tensor(
        [[IGNORE_INDEX] * 3 + [4, 2, 1], [IGNORE_INDEX] * 4 + [3, 3], [IGNORE_INDEX] * 5 + [1]]
    )
    padding = length - inputs.shape[1]
    inputs = nn.functional.pad(inputs, (0, padding), value=0)
    return Examples(inputs, nn.functional.pad(targets, (0, padding), value=IGNORE_INDEX))


def _transformer() -> CausalTransformer:
    return build_model(
        partial(CausalTransformer, vocab_size=5, context=10, dim=4, heads=2, layers=1, hidden=4),
        seed=0,
        dtype=torch.float64,
    )


def test_language_model_factors_average_the_positions_that_reach_a_counted_loss():
    # y_t = W a_t + b at every position t: a layer's per-example gradient is sum_t g_t a_t^T, so
    # A averages a a^T over the positions with g_t != 0. The head's outputs feed only their own
    # position's loss: there, the answers. The key projection also feeds every later position
    # through attention: there, the prompt too (target ignored, yet it shapes the answer), up to
    # the last answer; padding after it (causal attention) reaches nothing.
    model, data, task = _transformer(), _facts_like(8), LanguageModelingTask()
    layers = {"key": model.blocks[0].attention.key, "head": model.head}  # parameter order
    recorded = {}
    handles = [
        module.register_forward_hook(
            lambda _, args, output, name=name: recorded.update({name: (args[0], output)})
        )
        for name, module in layers.items()
    ]
    loss = task.loss(model(data.inputs), data.targets).sum()
    for handle in handles:
        handle.remove()
    gradients = torch.autograd.grad(loss, [recorded[name][1] for name in layers])
    reaches = {
        "key": torch.arange(8) <= 5,  # up to the last answer position, in every example
        "head": data.targets != IGNORE_INDEX,
    }
    names = ["blocks.0.attention.key.weight", "blocks.0.attention.key.bias"]
    solver = KFACSolver().fit(model, task, data, parameters=[*names, "head.weight", "head.bias"])
    for base, name, gradient in zip(solver.layers, layers, gradients, strict=True):
        inputs = recorded[name][0].detach()
        a = torch.cat([inputs, torch.ones(*inputs.shape[:-1], 1, dtype=torch.float64)], dim=2)
        mask = reaches[name].expand(3, 8)
        assert torch.equal((gradient != 0).any(-1), mask)  # exactly zero elsewhere
        a, g = a[mask], gradient.reshape(-1, gradient.shape[-1])
        expected = torch.kron(g.T @ g / 3, a.T @ a / len(a))
        torch.testing.assert_close(_dense_block(base), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_padding_after_the_answers_leaves_a_language_model_solve_unchanged(solver_class):
    # Positions after the last counted token reach no loss in a causal model: how many a batch
    # pads with must not change A, the eigenbases, EK-FAC's eigenvalues or the damping.
    model, task = _transformer(), LanguageModelingTask()
    names = kronecker.kronecker_parameters(model)
    size = sum(p.numel() for n, p in model.named_parameters() if n in names)
    vectors = torch.randn(3, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    solves = [
        solver_class().fit(model, task, _facts_like(length), parameters=names).solve(vectors)
        for length in (6, 10)
    ]
    torch.testing.assert_close(solves[0], solves[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver_class", [KFACSolver, EKFACSolver])
def test_a_target_outside_the_classes_is_named_not_an_eigh_failure(
    solver_class, tiny_mlp, tiny_data
):
    """A target outside the model's classes makes the factors NaN; ``eigh`` then failed with a
    raw LinAlgError ("ill-conditioned") instead of an error naming the problem."""
    targets = tiny_data.targets.clone()
    targets[4] = 7  # 3 classes
    with pytest.raises(NonFiniteGradientError, match="factor of module '0' is not finite"):
        solver_class(sampled_labels=False).fit(tiny_mlp, TASK, Examples(tiny_data.inputs, targets))


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_batch_norm_without_running_statistics_is_refused(solver_class):
    """It normalises each chunk by its own statistics, so the chunk's examples mix."""

    class Normalised(nn.Module):
        def __init__(self, track_running_stats: bool) -> None:
            super().__init__()
            self.conv = nn.Conv1d(1, 2, 3)
            self.norm = nn.BatchNorm1d(2, affine=False, track_running_stats=track_running_stats)
            self.head = nn.Linear(2 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.conv(x.unsqueeze(1))).flatten(1))

    data = _examples(6, (6,))
    with pytest.raises(ValueError, match=r"BatchNorm modules \['norm'\].*DiagonalSolver"):
        solver_class().fit(_build(lambda: Normalised(False)), TASK, data)
    assert solver_class().fit(_build(lambda: Normalised(True)), TASK, data).layers


@pytest.mark.parametrize("solver_class", SOLVERS)
def test_a_layer_whose_weight_is_also_used_directly_is_rejected(solver_class):
    """A tied decoder's share of the weight gradient never passes the layer's hooks."""
    with pytest.raises(ValueError, match=r"\['enc'\] reach the value both through their calls"):
        solver_class().fit(_build(TiedAutoencoder), TASK, _examples(6, (5,)))
