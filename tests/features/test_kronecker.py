"""KroneckerFeaturizer: exact against (B kron A) times per-sample gradients; JL-unbiased."""

import json

import pytest
import torch
from torch import nn

from tda.features.gradient import out_to_loss
from tda.features.kronecker import KroneckerFeaturizer
from tda.grads import NonFiniteGradientError, per_sample_gradients
from tda.models import MLP, CNN1d, build_model
from tda.task import ClassificationTask

TASK = ClassificationTask()
LENGTH = 3  # positions of the sequence model


class SequenceModel(nn.Module):
    """Linear layers on ``[b, T, in]``; ``mix`` is called twice and followed by an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.mix = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6 * LENGTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu_(self.mix(torch.tanh(self.embed(x))))
        return self.head(self.mix(hidden).flatten(1))


def _data(n: int, shape: tuple[int, ...], classes: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    return inputs, torch.randint(0, classes, (n,), generator=generator)


def _reference(featurizer, model, inputs, targets) -> torch.Tensor:
    """Explicit ``vec([grad W | grad b]) @ kron(B, A)`` per layer, from per-sample gradients."""
    blocks = []
    for name, (A, B) in featurizer.factors(model).items():
        layer = model.get_submodule(name)
        prefix = f"{name}." if name else ""
        options = {"function": featurizer.function, "chunk_size": 1000}
        parts = [
            per_sample_gradients(model, TASK, inputs, targets, parameters=[prefix + p], **options)
            for p in ("weight", "bias")
            if getattr(layer, p) is not None
        ]
        weight = parts[0].reshape(len(inputs), layer.out_features, layer.in_features)
        augmented = torch.cat([weight, *[b.unsqueeze(-1) for b in parts[1:]]], dim=2)
        blocks.append(augmented.reshape(len(inputs), -1) @ torch.kron(B, A))
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("function", ["output", "loss"])
def test_mlp_features_equal_kronecker_projection_of_per_sample_gradients(function):
    model = build_model(lambda: MLP(5, (7,), 3), seed=0, dtype=torch.float64)
    inputs, targets = _data(11, (5,))
    featurizer = KroneckerFeaturizer(dim=24, function=function, chunk_size=4)
    batch = featurizer(model, inputs, targets)
    assert batch.features.dtype == torch.float64
    assert batch.features.shape == (11, featurizer.output_dim(model))
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(batch.features, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(batch.out_to_loss, out_to_loss(model, TASK, inputs, targets))


def test_sequence_features_sum_over_positions_and_repeated_calls():
    model = build_model(SequenceModel, seed=1, dtype=torch.float64)
    inputs, targets = _data(7, (LENGTH, 4))
    featurizer = KroneckerFeaturizer(dim=40, chunk_size=3)
    factors = featurizer.factors(model)
    assert list(factors) == ["embed", "mix", "head"]
    assert factors["mix"][0].shape[0] == 6 and factors["embed"][0].shape[0] == 5  # bias column
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(
        featurizer(model, inputs, targets).features, expected, rtol=0, atol=1e-10
    )


def test_inner_products_are_unbiased_and_error_shrinks_with_dim():
    model = build_model(lambda: MLP(20, (32,), 10), seed=0, dtype=torch.float64)
    inputs, targets = _data(12, (20,), classes=10)
    gradients = per_sample_gradients(model, TASK, inputs, targets)
    exact, norms = gradients @ gradients.T, gradients.norm(dim=1)

    def estimates(dim: int, seeds: int) -> torch.Tensor:  # [seeds, n, n]
        featurizer = KroneckerFeaturizer(dim=dim)
        features = [featurizer.with_seed(s)(model, inputs, targets).features for s in range(seeds)]
        return torch.stack([f @ f.T for f in features])

    def relative_error(mean: torch.Tensor) -> float:
        return float(torch.linalg.norm(mean - exact) / torch.linalg.norm(exact))

    def scaled_rms(estimate: torch.Tensor) -> float:  # error in units of |g_i| |g_j|
        return float(((estimate - exact) / torch.outer(norms, norms)).pow(2).mean().sqrt())

    small = estimates(32, 256)
    few, many = relative_error(small[:4].mean(0)), relative_error(small.mean(0))
    assert many < few / 4 and many < 0.1  # unbiased: the error of the mean ~ 1/sqrt(seeds)
    large = estimates(512, 8)
    small_rms = sum(map(scaled_rms, small[:8])) / 8
    large_rms = sum(map(scaled_rms, large)) / 8
    # For rank-1 (MLP) gradients the error is ~ sqrt(2/k_out + 2/k_in), i.e. ~ k^(-1/4), far
    # above a dense map's sqrt(2/k): measured 0.34 at dim 32 and 0.15 at dim 512.
    assert large_rms < 0.6 * small_rms
    assert scaled_rms(large[0]) < 0.25


def test_chunk_size_does_not_change_features(tiny_mlp, tiny_data):
    one = KroneckerFeaturizer(dim=30, chunk_size=3)(tiny_mlp, tiny_data.inputs, tiny_data.targets)
    all_ = KroneckerFeaturizer(dim=30, chunk_size=256)(
        tiny_mlp, tiny_data.inputs, tiny_data.targets
    )
    torch.testing.assert_close(one.features, all_.features, rtol=0, atol=1e-12)
    torch.testing.assert_close(one.out_to_loss, all_.out_to_loss, rtol=0, atol=1e-12)


def test_seed_determinism_with_seed_and_config(tiny_mlp, tiny_data):
    x, y = tiny_data.inputs, tiny_data.targets
    featurizer = KroneckerFeaturizer(dim=30, seed=3)
    first, again = featurizer(tiny_mlp, x, y), KroneckerFeaturizer(dim=30, seed=3)(tiny_mlp, x, y)
    assert torch.equal(first.features, again.features)
    reseeded = featurizer.with_seed(4)
    assert reseeded == KroneckerFeaturizer(dim=30, seed=4) and reseeded.seed == 4
    assert not torch.allclose(reseeded(tiny_mlp, x, y).features, first.features)
    config = featurizer.config()
    assert json.loads(json.dumps(config)) == config
    assert config["featurizer"] == "KroneckerFeaturizer" and config["seed"] == 3
    assert (
        config["dim"] == 30 and config["modules"] is None and config["task"] == "ClassificationTask"
    )
    assert reseeded.config() != config


def test_size_rule_on_the_mnist1d_mlp():
    featurizer = KroneckerFeaturizer(dim=2048)
    model = MLP()  # 40-128-128-10: gradient shapes 128x41, 128x129, 10x129
    shapes = {name: (A.shape[1], B.shape[1]) for name, (A, B) in featurizer.factors(model).items()}
    assert shapes == {"0": (12, 38), "2": (39, 38), "4": (38, 3)}  # (k_in, k_out)
    assert featurizer.output_dim(model) == 38 * 12 + 38 * 39 + 3 * 38 == 2052


def test_modules_selects_layers(tiny_mlp, tiny_data):
    x, y = tiny_data.inputs, tiny_data.targets
    featurizer = KroneckerFeaturizer(dim=12, modules=["2"])
    assert featurizer.modules == ("2",) and list(featurizer.factors(tiny_mlp)) == ["2"]
    features = featurizer(tiny_mlp, x, y).features
    assert features.shape == (20, featurizer.output_dim(tiny_mlp))
    torch.testing.assert_close(features, _reference(featurizer, tiny_mlp, x, y), rtol=0, atol=1e-10)


def test_uncovered_parameters_need_explicit_modules():
    model = build_model(
        lambda: CNN1d(length=8, channels=2, kernel_size=3), seed=0, dtype=torch.float64
    )
    inputs, targets = _data(5, (8,), classes=10)
    with pytest.raises(ValueError, match=r"features\.0\.weight.*GradientFeaturizer"):
        KroneckerFeaturizer(dim=16)(model, inputs, targets)
    featurizer = KroneckerFeaturizer(dim=16, modules=("head",))
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(
        featurizer(model, inputs, targets).features, expected, rtol=0, atol=1e-10
    )


@pytest.mark.parametrize(("name", "message"), [("1", "ReLU"), ("missing", "not a module")])
def test_non_linear_module_name_is_rejected(tiny_mlp, tiny_data, name, message):
    with pytest.raises(ValueError, match=message):
        KroneckerFeaturizer(dim=8, modules=(name,))(tiny_mlp, tiny_data.inputs, tiny_data.targets)


def test_non_finite_feature_names_the_first_bad_example(tiny_mlp, tiny_data):
    inputs = tiny_data.inputs.clone()
    inputs[3, 0] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="example 3"):
        KroneckerFeaturizer(dim=8, chunk_size=2)(tiny_mlp, inputs, tiny_data.targets)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_mode_and_hooks_are_restored_even_after_errors(tiny_mlp, tiny_data):
    featurizer = KroneckerFeaturizer(dim=8)
    tiny_mlp.train()
    featurizer(tiny_mlp, tiny_data.inputs, tiny_data.targets)
    assert tiny_mlp.training and _hooks(tiny_mlp) == 0
    bad_inputs = [tiny_data.inputs[:, :4], tiny_data.inputs.clone().fill_(float("inf"))]
    for inputs in bad_inputs:  # a shape error inside forward, then non-finite features
        with pytest.raises((RuntimeError, ValueError)):
            featurizer(tiny_mlp, inputs, tiny_data.targets)
        assert tiny_mlp.training and _hooks(tiny_mlp) == 0


def test_float32_model_gives_float32_features(tiny_data):
    model = build_model(lambda: MLP(6, (8,), 3), seed=0)
    batch = KroneckerFeaturizer(dim=8)(model, tiny_data.inputs.float(), tiny_data.targets)
    assert batch.features.dtype == torch.float32 and batch.out_to_loss.dtype == torch.float32


@pytest.mark.parametrize("settings", [{"dim": 0}, {"chunk_size": 0}, {"function": "margin"}])
def test_invalid_settings_are_rejected(settings):
    with pytest.raises(ValueError):
        KroneckerFeaturizer(**{"dim": 8, **settings})
