import warnings

import pytest
import torch
from torch import nn

from tda.grads import (
    NonFiniteGradientError,
    VmapFallbackWarning,
    parameter_count,
    per_sample_gradients,
    select_parameters,
)
from tda.task import ClassificationTask

TASK = ClassificationTask()


def loop_reference(model, inputs, targets, function="output", names=None):
    """Per-example autograd, one example at a time: the oracle for the vmap kernel."""
    params = [p for n, p in model.named_parameters() if names is None or n in names]
    rows = []
    for x, y in zip(inputs, targets, strict=True):
        value = getattr(TASK, function)(model(x[None])[0], y)
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)]))
    return torch.stack(rows)


@pytest.mark.parametrize("function", ["output", "loss"])
def test_vmap_gradients_equal_a_per_example_autograd_loop(tiny_mlp, tiny_data, function):
    gradients = per_sample_gradients(
        tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets, function=function, vectorize=True
    )
    expected = loop_reference(tiny_mlp, tiny_data.inputs, tiny_data.targets, function)
    assert gradients.shape == (20, parameter_count(tiny_mlp))
    torch.testing.assert_close(gradients, expected, rtol=1e-10, atol=1e-12)


def test_parameter_selection_keeps_model_order(tiny_mlp, tiny_data):
    names = ["2.weight", "0.bias"]
    gradients = per_sample_gradients(
        tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets, parameters=names
    )
    expected = loop_reference(tiny_mlp, tiny_data.inputs, tiny_data.targets, names=set(names))
    torch.testing.assert_close(gradients, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="not trainable parameters"):
        per_sample_gradients(
            tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets, parameters=["nope"]
        )


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 20, 64])
def test_chunk_size_does_not_change_gradients(tiny_mlp, tiny_data, chunk_size):
    reference = per_sample_gradients(
        tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets, chunk_size=20
    )
    chunked = per_sample_gradients(
        tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets, chunk_size=chunk_size
    )
    torch.testing.assert_close(chunked, reference, rtol=1e-12, atol=1e-14)


class DataDependentModel(nn.Module):
    """Python control flow on a tensor value: vmap cannot trace it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3).double()

    def forward(self, x):
        if x.sum() > 0:
            return self.linear(x)
        return -self.linear(x)


def test_untraceable_model_falls_back_to_loop_with_a_warning(tiny_data):
    model = DataDependentModel()
    with pytest.warns(VmapFallbackWarning, match="per-example loop"):
        gradients = per_sample_gradients(model, TASK, tiny_data.inputs, tiny_data.targets)
    torch.testing.assert_close(
        gradients, loop_reference(model, tiny_data.inputs, tiny_data.targets)
    )
    with pytest.raises(RuntimeError):
        per_sample_gradients(model, TASK, tiny_data.inputs, tiny_data.targets, vectorize=True)


def test_nan_gradient_names_the_example(tiny_mlp, tiny_data):
    inputs = tiny_data.inputs.clone()
    inputs[13, 2] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="example 13"):
        per_sample_gradients(tiny_mlp, TASK, inputs, tiny_data.targets, chunk_size=4)


@pytest.mark.parametrize("function", ["output", "loss"])
@pytest.mark.parametrize("bad_target", [-1, 99])
def test_a_target_outside_the_classes_names_the_example(tiny_mlp, tiny_data, function, bad_target):
    targets = tiny_data.targets.clone()
    targets[6] = bad_target  # read as no class at all, it would give a plausible wrong gradient
    with pytest.raises(NonFiniteGradientError, match="example 6 .* the target"):
        per_sample_gradients(tiny_mlp, TASK, tiny_data.inputs, targets, function=function)


def test_empty_and_mismatched_inputs_are_refused(tiny_mlp, tiny_data):
    with pytest.raises(ValueError, match="empty"):
        per_sample_gradients(tiny_mlp, TASK, tiny_data.inputs[:0], tiny_data.targets[:0])
    with pytest.raises(ValueError, match="targets"):
        per_sample_gradients(tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets[:5])


def test_model_mode_is_restored(tiny_mlp, tiny_data):
    tiny_mlp.train()
    per_sample_gradients(tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets)
    assert tiny_mlp.training


def test_a_submodule_frozen_in_eval_mode_stays_in_eval_mode(tiny_mlp, tiny_data):
    tiny_mlp.train()
    tiny_mlp[1].eval()  # e.g. a normalisation layer its owner froze
    per_sample_gradients(tiny_mlp, TASK, tiny_data.inputs, tiny_data.targets)
    assert [m.training for m in tiny_mlp.modules()] == [True, True, False, True]


def test_a_tied_weight_gets_the_gradient_of_every_use(tiny_tied, tiny_data):
    gradients = per_sample_gradients(tiny_tied, TASK, tiny_data.inputs, tiny_data.targets)
    params = list(tiny_tied.parameters())  # the shared weight once, as autograd accumulates it
    for i, (x, y) in enumerate(zip(tiny_data.inputs, tiny_data.targets, strict=True)):
        output = TASK.output(tiny_tied(x.unsqueeze(0)).squeeze(0), y)
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(output, params)])
        torch.testing.assert_close(gradients[i], expected, rtol=1e-12, atol=1e-12)


def test_a_single_name_must_come_in_a_list(tiny_mlp):
    with pytest.raises(TypeError, match="list of names, got the string '2.weight'"):
        select_parameters(tiny_mlp, "2.weight")  # not the parameters '2', '.', 'w', ...


def test_parameters_may_be_a_rule_of_the_model(tiny_mlp):
    by_rule = select_parameters(tiny_mlp, lambda model: ["2.weight", "2.bias"])
    assert list(by_rule) == ["2.weight", "2.bias"]
    with pytest.raises(ValueError, match="not trainable parameters"):
        select_parameters(tiny_mlp, lambda model: ["missing"])


class SharedBuffer(nn.Module):
    """One constant table registered as a buffer of two submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = nn.Linear(6, 4), nn.Linear(4, 3)
        table = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)
        self.first.register_buffer("scale", table)
        self.last.register_buffer("scale", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(torch.tanh(self.first(x) * self.first.scale) * self.last.scale)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("case", ["tied weight left out", "tied weight frozen", "shared buffer"])
def test_a_tensor_under_two_names_outside_the_selection_stays_tied(
    tiny_tied, tiny_data, case, vectorize
):
    """Detached once per name, it reached functional_call as two values for tied names."""
    model, names = tiny_tied, ["first.weight", "first.bias", "last.bias"]
    if case == "tied weight frozen":
        model.middle.weight.requires_grad_(False)
    elif case == "shared buffer":
        model, names = SharedBuffer().double(), ["first.weight", "first.bias", "last.weight"]
    x, y = tiny_data.inputs, tiny_data.targets
    selection = None if case == "tied weight frozen" else names
    gradients = per_sample_gradients(model, TASK, x, y, parameters=selection, vectorize=vectorize)
    expected = loop_reference(model, x, y, names=names)
    torch.testing.assert_close(gradients, expected, rtol=1e-12, atol=1e-12)


class ItemModel(nn.Module):
    """``.item()`` on a tensor: vmap refuses it, the per-example loop does not."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3).double()

    def forward(self, x):
        return self.linear(x) * (1.0 + 0.0 * x.sum().item())


def test_a_model_calling_item_falls_back_to_the_loop(tiny_data):
    model = ItemModel()
    with pytest.warns(VmapFallbackWarning, match=r"\.item\(\)"):
        gradients = per_sample_gradients(model, TASK, tiny_data.inputs, tiny_data.targets)
    torch.testing.assert_close(
        gradients, loop_reference(model, tiny_data.inputs, tiny_data.targets)
    )


def test_a_failing_forward_pass_surfaces_as_itself_without_blaming_vmap(tiny_data):
    """Any RuntimeError fell back to the loop with a warning that vmap could not trace the
    model, before the loop failed the same way."""
    model = nn.Linear(5, 3).double()  # the examples have 6 features
    with warnings.catch_warnings():
        warnings.simplefilter("error", VmapFallbackWarning)
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            per_sample_gradients(model, TASK, tiny_data.inputs, tiny_data.targets)


def test_inputs_of_another_float_dtype_are_refused_before_any_gradient(tiny_mlp, tiny_data):
    """A float32 model on float64 inputs warned that vmap could not trace it, then failed with
    torch's "mat1 and mat2 must have the same dtype"."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", VmapFallbackWarning)
        with pytest.raises(ValueError, match="parameters are torch.float32 but the inputs are"):
            per_sample_gradients(tiny_mlp.float(), TASK, tiny_data.inputs, tiny_data.targets)
    tokens = nn.Sequential(nn.Embedding(7, 4), nn.Flatten(), nn.Linear(8, 3)).double()
    ids = torch.randint(0, 7, (5, 2), generator=torch.Generator().manual_seed(0))
    assert per_sample_gradients(tokens, TASK, ids, ids[:, 0] % 3).shape == (5, 28 + 8 * 3 + 3)


class OutOfMemoryOnce(nn.Module):
    """Raises ``torch.OutOfMemoryError`` on its first call: the vectorised call over a chunk, as
    a chunk too large for the device would."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3).double()
        self.failed = False

    def forward(self, x):
        if not self.failed:
            self.failed = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")
        return self.linear(x)


def test_out_of_memory_under_vmap_asks_for_smaller_chunks_instead_of_falling_back(tiny_data):
    """It was taken for a model vmap cannot trace: every later chunk ran the slow loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", VmapFallbackWarning)
        with pytest.raises(
            torch.OutOfMemoryError, match=r"a chunk of 16 examples .*40.00 GiB.*lower chunk_size"
        ):
            per_sample_gradients(
                OutOfMemoryOnce(), TASK, tiny_data.inputs, tiny_data.targets, chunk_size=16
            )


def test_a_tied_weight_named_by_its_second_name_is_refused_naming_the_first(tiny_tied):
    """It was refused as "not trainable parameters of the model", though it is one."""
    with pytest.raises(
        ValueError, match=r"'last.weight' is tied to 'middle.weight': name a tied weight by its "
    ):
        select_parameters(tiny_tied, ["first.bias", "last.weight"])
    assert list(select_parameters(tiny_tied, ["first.bias", "middle.weight"])) == [
        "first.bias",
        "middle.weight",
    ]
    tiny_tied.middle.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"\['last.weight'\] are not trainable parameters"):
        select_parameters(tiny_tied, ["last.weight"])
