"""KroneckerFeaturizer: exact against its explicit projection of per-sample gradients; unbiased.

Both structures are checked against ``P`` built from the featurizer's own factors: ``kron(B, A)``,
or the Khatri-Rao matrix whose column ``j`` is ``kron(B[:, j], A[:, j])``.
"""

import json

import pytest
import torch
from torch import nn

from tda.features.gradient import out_to_loss
from tda.features.kronecker import KroneckerFeaturizer
from tda.grads import NonFiniteGradientError, per_sample_gradients
from tda.models import MLP, CNN1d, build_model
from tda.task import ClassificationTask
from tests.conftest import TiedAutoencoder

TASK = ClassificationTask()
LENGTH = 3  # positions of the sequence model
STRUCTURES = ("kronecker", "khatri_rao")


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


def _matrix(structure: str, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The layer's ``P`` ``[out * c, width]``, column by column for Khatri-Rao."""
    if structure == "kronecker":
        return torch.kron(B, A)
    return torch.stack([torch.kron(B[:, j], A[:, j]) for j in range(A.shape[1])], dim=1)


def _reference(featurizer, model, inputs, targets) -> torch.Tensor:
    """Explicit ``vec([grad W | grad b]) @ P`` per layer, from per-sample gradients."""
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
        weight = parts[0].reshape(len(inputs), layer.weight.shape[0], -1)  # [out, in (x kernel)]
        augmented = torch.cat([weight, *[b.unsqueeze(-1) for b in parts[1:]]], dim=2)
        matrix = _matrix(featurizer.structure, A, B)
        blocks.append(augmented.reshape(len(inputs), -1) @ matrix)
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("function", ["output", "loss"])
def test_mlp_features_equal_projection_of_per_sample_gradients(function, structure):
    model = build_model(lambda: MLP(5, (7,), 3), seed=0, dtype=torch.float64)
    inputs, targets = _data(11, (5,))
    featurizer = KroneckerFeaturizer(dim=24, function=function, chunk_size=4, structure=structure)
    batch = featurizer(model, inputs, targets)
    assert batch.features.dtype == torch.float64
    assert batch.features.shape == (11, featurizer.output_dim(model))
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(batch.features, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(batch.out_to_loss, out_to_loss(model, TASK, inputs, targets))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_sequence_features_sum_over_positions_and_repeated_calls(structure):
    model = build_model(SequenceModel, seed=1, dtype=torch.float64)
    inputs, targets = _data(7, (LENGTH, 4))
    featurizer = KroneckerFeaturizer(dim=40, chunk_size=3, structure=structure)
    factors = featurizer.factors(model)
    assert list(factors) == ["embed", "mix", "head"]
    assert factors["mix"][0].shape[0] == 6 and factors["embed"][0].shape[0] == 5  # bias column
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(
        featurizer(model, inputs, targets).features, expected, rtol=0, atol=1e-10
    )


def _scaled_rms(estimate: torch.Tensor, exact: torch.Tensor, norms: torch.Tensor) -> float:
    """RMS error of inner products in units of ``|g_i| |g_j|``."""
    return float(((estimate - exact) / torch.outer(norms, norms)).pow(2).mean().sqrt())


def _inner_products(structure: str, dim: int, seeds: int, model, inputs, targets):
    """Feature inner products ``[seeds, n, n]`` for seeds ``0 .. seeds - 1``."""
    featurizer = KroneckerFeaturizer(dim=dim, structure=structure)
    features = [featurizer.with_seed(s)(model, inputs, targets).features for s in range(seeds)]
    return torch.stack([f @ f.T for f in features])


# Measured scaled RMS at dim 32 -> 512 (8 seeds): kronecker 0.30 -> 0.15 (~ k^(-1/4), the product
# of two small sketches for rank-1 MLP gradients), khatri_rao 0.25 -> 0.063 (~ k^(-1/2)).
@pytest.mark.parametrize(
    ("structure", "shrink", "bound"), [("kronecker", 0.6, 0.25), ("khatri_rao", 0.35, 0.1)]
)
def test_inner_products_are_unbiased_and_error_shrinks_with_dim(structure, shrink, bound):
    model = build_model(lambda: MLP(20, (32,), 10), seed=0, dtype=torch.float64)
    inputs, targets = _data(12, (20,), classes=10)
    gradients = per_sample_gradients(model, TASK, inputs, targets)
    exact, norms = gradients @ gradients.T, gradients.norm(dim=1)

    def relative_error(mean: torch.Tensor) -> float:
        return float(torch.linalg.norm(mean - exact) / torch.linalg.norm(exact))

    small = _inner_products(structure, 32, 256, model, inputs, targets)
    few, many = relative_error(small[:4].mean(0)), relative_error(small.mean(0))
    assert many < few / 4 and many < 0.1  # unbiased: the error of the mean ~ 1/sqrt(seeds)
    large = _inner_products(structure, 512, 8, model, inputs, targets)
    small_rms = sum(_scaled_rms(e, exact, norms) for e in small[:8]) / 8
    large_rms = sum(_scaled_rms(e, exact, norms) for e in large) / 8
    assert large_rms < shrink * small_rms
    assert _scaled_rms(large[0], exact, norms) < bound


def test_khatri_rao_inner_products_beat_kronecker_at_equal_dim():
    model = build_model(lambda: MLP(20, (32,), 10), seed=0, dtype=torch.float64)
    inputs, targets = _data(12, (20,), classes=10)
    gradients = per_sample_gradients(model, TASK, inputs, targets)
    exact, norms = gradients @ gradients.T, gradients.norm(dim=1)
    errors = {
        structure: sum(
            _scaled_rms(estimate, exact, norms)
            for estimate in _inner_products(structure, 1024, 8, model, inputs, targets)
        )
        / 8
        for structure in STRUCTURES
    }
    # Measured at dim 1024: khatri_rao 0.046, kronecker 0.108.
    assert errors["khatri_rao"] < 0.6 * errors["kronecker"] and errors["khatri_rao"] < 0.07


@pytest.mark.parametrize("structure", STRUCTURES)
def test_chunk_size_does_not_change_features(tiny_mlp, tiny_data, structure):
    x, y = tiny_data.inputs, tiny_data.targets
    one = KroneckerFeaturizer(dim=30, chunk_size=3, structure=structure)(tiny_mlp, x, y)
    all_ = KroneckerFeaturizer(dim=30, chunk_size=256, structure=structure)(tiny_mlp, x, y)
    torch.testing.assert_close(one.features, all_.features, rtol=0, atol=1e-12)
    torch.testing.assert_close(one.out_to_loss, all_.out_to_loss, rtol=0, atol=1e-12)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_seed_determinism_with_seed_and_config(tiny_mlp, tiny_data, structure):
    x, y = tiny_data.inputs, tiny_data.targets
    featurizer = KroneckerFeaturizer(dim=30, seed=3, structure=structure)
    again = KroneckerFeaturizer(dim=30, seed=3, structure=structure)(tiny_mlp, x, y)
    first = featurizer(tiny_mlp, x, y)
    assert torch.equal(first.features, again.features)
    reseeded = featurizer.with_seed(4)
    assert reseeded == KroneckerFeaturizer(dim=30, seed=4, structure=structure)
    assert reseeded.seed == 4 and reseeded.structure == structure
    assert not torch.allclose(reseeded(tiny_mlp, x, y).features, first.features)
    config = featurizer.config()
    assert json.loads(json.dumps(config)) == config
    assert config["featurizer"] == "KroneckerFeaturizer" and config["seed"] == 3
    assert config["structure"] == structure and config["dim"] == 30
    assert config["modules"] is None and config["task"] == "ClassificationTask"
    assert reseeded.config() != config


def test_khatri_rao_is_the_default_and_keys_the_config():
    default = KroneckerFeaturizer(dim=8)
    assert default.structure == "khatri_rao"
    other = KroneckerFeaturizer(dim=8, structure="kronecker")
    assert default.config() != other.config() and default != other


def test_size_rules_on_the_mnist1d_mlp():
    model = MLP()  # 40-128-128-10: gradient shapes 128x41, 128x129, 10x129
    featurizer = KroneckerFeaturizer(dim=2048, structure="kronecker")
    shapes = {name: (A.shape[1], B.shape[1]) for name, (A, B) in featurizer.factors(model).items()}
    assert shapes == {"0": (12, 38), "2": (39, 38), "4": (38, 3)}  # (k_in, k_out)
    assert featurizer.output_dim(model) == 38 * 12 + 38 * 39 + 3 * 38 == 2052
    # Khatri-Rao: 1 each, then 2045 split by largest remainder (465.6, 1464.95, 114.45).
    featurizer = KroneckerFeaturizer(dim=2048, structure="khatri_rao")
    shapes = {name: (A.shape, B.shape) for name, (A, B) in featurizer.factors(model).items()}
    assert shapes == {
        "0": ((41, 467), (128, 467)),
        "2": ((129, 1466), (128, 1466)),
        "4": ((129, 115), (10, 115)),
    }
    assert featurizer.output_dim(model) == 2048


def test_khatri_rao_needs_a_feature_per_layer(tiny_mlp, tiny_data):
    with pytest.raises(ValueError, match="dim=1 is smaller than the 2 chosen layers"):
        KroneckerFeaturizer(dim=1)(tiny_mlp, tiny_data.inputs, tiny_data.targets)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_modules_selects_layers(tiny_mlp, tiny_data, structure):
    x, y = tiny_data.inputs, tiny_data.targets
    featurizer = KroneckerFeaturizer(dim=12, modules=["2"], structure=structure)
    assert featurizer.modules == ("2",) and list(featurizer.factors(tiny_mlp)) == ["2"]
    features = featurizer(tiny_mlp, x, y).features
    assert features.shape == (20, featurizer.output_dim(tiny_mlp))
    torch.testing.assert_close(features, _reference(featurizer, tiny_mlp, x, y), rtol=0, atol=1e-10)


class Convolutions(nn.Module):
    """Conv2d with stride and reflect padding, then Conv1d with 'same' padding, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(1, 2, (2, 3), stride=(1, 2), padding=1, padding_mode="reflect")
        self.line = nn.Conv1d(2, 2, 3, padding="same", bias=False)
        self.head = nn.Linear(2 * 15, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.image(x.unsqueeze(1)))  # [b, 2, 5, 3]
        return self.head(torch.relu(self.line(hidden.flatten(2))).flatten(1))


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("name", ["cnn1d", "convolutions"])
def test_convolution_features_equal_projection_of_per_sample_gradients(structure, name):
    factory, shape = {
        "cnn1d": (lambda: CNN1d(length=8, channels=2, kernel_size=3), (8,)),
        "convolutions": (Convolutions, (4, 5)),
    }[name]
    model = build_model(factory, seed=0, dtype=torch.float64)
    inputs, targets = _data(6, shape, classes=3)
    featurizer = KroneckerFeaturizer(dim=40, chunk_size=4, structure=structure)
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(
        featurizer(model, inputs, targets).features, expected, rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("structure", STRUCTURES)
def test_uncovered_parameters_need_explicit_modules(structure):
    class Normalised(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(x))

    model = build_model(Normalised, seed=0, dtype=torch.float64)
    inputs, targets = _data(5, (8,), classes=3)
    with pytest.raises(ValueError, match=r"norm\.weight.*GradientFeaturizer"):
        KroneckerFeaturizer(dim=16, structure=structure)(model, inputs, targets)
    featurizer = KroneckerFeaturizer(dim=16, modules=("head",), structure=structure)
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


@pytest.mark.parametrize(
    "settings", [{"dim": 0}, {"chunk_size": 0}, {"function": "margin"}, {"structure": "tensor"}]
)
def test_invalid_settings_are_rejected(settings):
    with pytest.raises(ValueError):
        KroneckerFeaturizer(**{"dim": 8, **settings})


class TiedHead(nn.Module):
    """Token embedding and output head share one weight (as in GPT-2)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)).mean(1))


@pytest.mark.parametrize("modules", [None, ("head",)])
def test_tied_weights_are_refused(modules):
    """The head's hooks see only its own calls, not the embedding's share of the gradient."""
    model = build_model(TiedHead, seed=0, dtype=torch.float64)
    tokens = torch.randint(0, 5, (6, 3), generator=torch.Generator().manual_seed(0))
    featurizer = KroneckerFeaturizer(dim=10, modules=modules)
    with pytest.raises(ValueError, match=r"\['head'\] share a trainable parameter"):
        featurizer(model, tokens, torch.randint(0, 5, (6,)))


class Attention(nn.Module):
    """nn.MultiheadAttention applies ``out_proj``'s weight without calling ``out_proj``."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4 * LENGTH, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(x, x, x, need_weights=False)[0].flatten(1))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@pytest.mark.parametrize("structure", STRUCTURES)
def test_layer_whose_weight_is_used_without_calling_it_is_refused(structure):
    """Its hooks never fire, so its block would be zeros although its gradient is not."""
    model = build_model(Attention, seed=0, dtype=torch.float64)
    inputs, targets = _data(5, (LENGTH, 4))
    featurizer = KroneckerFeaturizer(
        dim=20, modules=("attention.out_proj", "head"), structure=structure
    )
    with pytest.raises(ValueError, match=r"\['attention.out_proj'\] reach the value without"):
        featurizer(model, inputs, targets)
    assert _hooks(model) == 0
    alone = KroneckerFeaturizer(dim=20, modules=("head",), structure=structure)
    expected = _reference(alone, model, inputs, targets)
    torch.testing.assert_close(alone(model, inputs, targets).features, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_features_do_not_depend_on_the_callers_grad_mode(tiny_mlp, tiny_data, structure):
    """Under inference_mode autograd recorded nothing, and every feature read as zero."""
    x, y = tiny_data.inputs, tiny_data.targets
    featurizer = KroneckerFeaturizer(dim=12, structure=structure)
    expected = _reference(featurizer, tiny_mlp, x, y)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            features = KroneckerFeaturizer(dim=12, structure=structure)(tiny_mlp, x, y).features
            made_inside = featurizer(tiny_mlp, x.clone(), y).features  # an inference tensor
        torch.testing.assert_close(features, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(made_inside, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_layer_whose_weight_is_also_used_directly_is_refused(structure):
    """Its block would miss the decoder's share of the weight gradient."""
    model = build_model(TiedAutoencoder, seed=0, dtype=torch.float64)
    inputs, targets = _data(4, (5,), classes=5)
    featurizer = KroneckerFeaturizer(dim=16, structure=structure)
    with pytest.raises(ValueError, match=r"\['enc'\] reach the value both through their calls"):
        featurizer(model, inputs, targets)
    assert _hooks(model) == 0


class BatchStatistics(nn.Module):
    """A BatchNorm without running statistics normalises by the batch's, even in eval mode."""

    def __init__(self, track_running_stats: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2, affine=False, track_running_stats=track_running_stats)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).flatten(1))


@pytest.mark.parametrize("structure", STRUCTURES)
def test_batch_norm_without_running_statistics_is_refused(structure):
    """One backward pass of the summed value would mix the examples of a chunk."""
    inputs, targets = _data(6, (1, 6, 6), classes=3)
    featurizer = KroneckerFeaturizer(dim=16, chunk_size=6, structure=structure)
    model = build_model(lambda: BatchStatistics(False), seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"BatchNorm modules \['norm'\].*GradientFeaturizer"):
        featurizer(model, inputs, targets)
    model = build_model(lambda: BatchStatistics(True), seed=0, dtype=torch.float64)
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(
        featurizer(model, inputs, targets).features, expected, rtol=0, atol=1e-10
    )


PARAMETRIZATIONS = {
    "weight_norm": nn.utils.parametrizations.weight_norm,
    "spectral_norm": nn.utils.parametrizations.spectral_norm,
    "old weight_norm": nn.utils.weight_norm,  # a computed plain tensor, not a parametrization
}


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("modules", [None, ("0",)])
@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_parametrized_layers_are_refused(tiny_data, parametrization, modules):
    """The hooks would give the gradient of the computed weight, not of its parameters."""
    model = build_model(
        lambda: nn.Sequential(PARAMETRIZATIONS[parametrization](nn.Linear(6, 4)), nn.Linear(4, 3)),
        seed=0,
        dtype=torch.float64,
    )
    featurizer = KroneckerFeaturizer(dim=16, modules=modules)
    with pytest.raises(ValueError, match=r"module '0' has a parametrized weight.*Gradient"):
        featurizer(model, tiny_data.inputs, tiny_data.targets)


class _SequenceFirst(nn.Module):
    """A layer run on ``[T, b, in]`` (as ``batch_first=False`` attention code does)."""

    def __init__(self):
        super().__init__()
        self.mix, self.head = nn.Linear(3, 3), nn.Linear(3 * LENGTH, 2)

    def forward(self, x):  # [b, T, 3]
        mixed = torch.tanh(self.mix(x.transpose(0, 1))).transpose(0, 1)
        return self.head(mixed.reshape(len(x), -1))


@pytest.mark.parametrize("chunk_size", [LENGTH, LENGTH - 1])
def test_a_layer_without_the_examples_on_its_first_axis_is_refused(chunk_size):
    """With a chunk of T examples, its [T, b, in] input passed the size check, and the
    positions of different examples were summed into each other's features."""
    model = build_model(_SequenceFirst, seed=0, dtype=torch.float64)
    inputs, targets = _data(8, (LENGTH, 3), classes=2)
    featurizer = KroneckerFeaturizer(dim=20, chunk_size=chunk_size, modules=("mix",))
    with pytest.raises(ValueError, match=r"module 'mix' does not take the examples on the first"):
        featurizer(model, inputs, targets)


def test_a_sequence_as_long_as_the_chunk_is_not_taken_for_the_examples():
    """The extra look (one example) runs when an axis has the chunk's size; it must pass a
    batch-first model and leave its features exact."""
    model = build_model(SequenceModel, seed=1, dtype=torch.float64)
    inputs, targets = _data(2 * LENGTH, (LENGTH, 4))
    featurizer = KroneckerFeaturizer(dim=40, chunk_size=LENGTH)
    expected = _reference(featurizer, model, inputs, targets)
    torch.testing.assert_close(
        featurizer(model, inputs, targets).features, expected, rtol=0, atol=1e-10
    )
