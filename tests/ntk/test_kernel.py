"""Empirical NTKs against explicit Jacobian products on a tiny float64 MLP."""

import pytest
import torch

from tda.grads import NonFiniteGradientError
from tda.models import LogisticRegression, build_model
from tda.ntk import (
    DegenerateKernelError,
    EmpiricalNTK,
    KernelTooLargeError,
    check_kernel,
    iter_output_jacobians,
)
from tda.projection import DenseProjector, IdentityProjector, SparseProjector


def explicit_jacobians(model, inputs):
    """``[n, C, p]`` by a Python loop over examples and classes with plain autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x in inputs:
        logits = model(x.unsqueeze(0)).squeeze(0)
        per_class = []
        for c in range(len(logits)):
            grads = torch.autograd.grad(logits[c], params, retain_graph=True)
            per_class.append(torch.cat([g.reshape(-1) for g in grads]))
        rows.append(torch.stack(per_class))
    return torch.stack(rows)


def test_jacobians_match_autograd_loop(tiny_mlp, tiny_data):
    chunks = list(iter_output_jacobians(tiny_mlp, tiny_data.inputs, chunk_size=7))
    assert [len(c) for c in chunks] == [7, 7, 6]
    expected = explicit_jacobians(tiny_mlp, tiny_data.inputs)
    torch.testing.assert_close(torch.cat(chunks), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_trace_ntk_equals_traced_jacobian_product(tiny_mlp, tiny_data, chunk_size):
    left, right = tiny_data.inputs[:12], tiny_data.inputs[12:]
    jl, jr = explicit_jacobians(tiny_mlp, left), explicit_jacobians(tiny_mlp, right)
    expected = torch.einsum("acp,bcp->ab", jl, jr)  # tr(J(x) J(x')^T)
    kernel = EmpiricalNTK("trace", chunk_size=chunk_size).matrix(tiny_mlp, left, right)
    assert kernel.shape == (12, 8) and kernel.dtype == torch.float64
    torch.testing.assert_close(kernel, expected, rtol=1e-12, atol=1e-12)


def test_trace_gram_is_symmetric_and_exact(tiny_mlp, tiny_data):
    jacobians = explicit_jacobians(tiny_mlp, tiny_data.inputs)
    gram = EmpiricalNTK("trace", chunk_size=6).matrix(tiny_mlp, tiny_data.inputs)
    torch.testing.assert_close(gram, torch.einsum("acp,bcp->ab", jacobians, jacobians))
    torch.testing.assert_close(gram, gram.T, rtol=0, atol=0)


def test_pseudo_ntk_equals_summed_logit_gradient_product(tiny_mlp, tiny_data):
    summed = explicit_jacobians(tiny_mlp, tiny_data.inputs).sum(1)  # grad of sum_c f_c, [n, p]
    expected = summed[:9] @ summed[9:].T / 3  # 1/C with C = 3
    kernel = EmpiricalNTK("pseudo", chunk_size=4).matrix(
        tiny_mlp, tiny_data.inputs[:9], tiny_data.inputs[9:]
    )
    torch.testing.assert_close(kernel, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["trace", "pseudo"])
def test_identity_projection_is_exact(tiny_mlp, tiny_data, kind):
    exact = EmpiricalNTK(kind).matrix(tiny_mlp, tiny_data.inputs)
    projected = EmpiricalNTK(kind, IdentityProjector()).matrix(tiny_mlp, tiny_data.inputs)
    torch.testing.assert_close(projected, exact, rtol=0, atol=0)


PROJECTORS = {
    "dense": lambda dim, seed: DenseProjector(dim, seed=seed),
    "sparse": lambda dim, seed: SparseProjector(dim, nonzeros=2, seed=seed),
}


@pytest.mark.parametrize("projector", sorted(PROJECTORS))
@pytest.mark.parametrize("kind", ["trace", "pseudo"])
def test_projected_ntk_converges_to_exact(tiny_mlp, tiny_data, projector, kind):
    exact = EmpiricalNTK(kind).matrix(tiny_mlp, tiny_data.inputs)
    errors = []
    for dim in (8, 64, 1024):
        per_seed = []
        for seed in range(4):
            ntk = EmpiricalNTK(kind, PROJECTORS[projector](dim, seed))
            kernel = ntk.matrix(tiny_mlp, tiny_data.inputs)
            per_seed.append(float((kernel - exact).norm() / exact.norm()))
        errors.append(sum(per_seed) / len(per_seed))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.08, errors  # JL: relative error ~ sqrt(2 / k)


def test_projection_is_deterministic_under_a_seed(tiny_mlp, tiny_data):
    ntk = EmpiricalNTK("trace", DenseProjector(16, seed=3))
    first = ntk.matrix(tiny_mlp, tiny_data.inputs)
    second = EmpiricalNTK("trace", DenseProjector(16, seed=3)).matrix(tiny_mlp, tiny_data.inputs)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_projected_features_scale_with_k(tiny_mlp, tiny_data):
    features = EmpiricalNTK("trace", DenseProjector(5)).features(tiny_mlp, tiny_data.inputs)
    assert features.shape == (20, 3 * 5)
    pseudo = EmpiricalNTK("pseudo", DenseProjector(5)).features(tiny_mlp, tiny_data.inputs)
    assert pseudo.shape == (20, 5)


def test_too_large_kernel_is_refused_with_size_and_way_out(tiny_mlp, tiny_data):
    ntk = EmpiricalNTK("trace", chunk_size=4, memory_limit_bytes=40_000)
    with pytest.raises(KernelTooLargeError, match="would need .* projector with dim <=") as error:
        ntk.matrix(tiny_mlp, tiny_data.inputs)
    exact_bytes = 20 * 3 * 83 * 8 + 20 * 20 * 8 + 4 * (3 * 3 * 83 + 3 * 83) * 8  # 3 copies
    assert error.value.required_bytes == exact_bytes
    largest = int(str(error.value).split("dim <= ")[1].split(" ")[0])
    small = EmpiricalNTK("trace", DenseProjector(largest), chunk_size=4, memory_limit_bytes=40_000)
    assert small.matrix(tiny_mlp, tiny_data.inputs).shape == (20, 20)


def test_the_pseudo_ntk_is_charged_one_gradient_per_example_not_a_jacobian(tiny_mlp, tiny_data):
    """The pseudo NTK takes one gradient of the summed logits per example: charged a [C, p]
    Jacobian per example, it was refused at about 1/C of the size it fits in."""
    ntk = EmpiricalNTK("pseudo", chunk_size=4, memory_limit_bytes=20_000)
    with pytest.raises(
        KernelTooLargeError, match="chunks of 4 x 83 gradient values, held 3x"
    ) as error:
        ntk.matrix(tiny_mlp, tiny_data.inputs)
    assert error.value.required_bytes == 20 * 83 * 8 + 20 * 20 * 8 + 4 * (3 * 83 + 83) * 8
    largest = int(str(error.value).split("dim <= ")[1].split(" ")[0])
    small = EmpiricalNTK("pseudo", DenseProjector(largest), chunk_size=4, memory_limit_bytes=20_000)
    assert small.matrix(tiny_mlp, tiny_data.inputs).shape == (20, 20)


def test_kernel_alone_too_large_says_fewer_examples(tiny_mlp, tiny_data):
    ntk = EmpiricalNTK("trace", DenseProjector(2), memory_limit_bytes=1_000)
    with pytest.raises(KernelTooLargeError, match="kernel and one chunk's gradients alone .*fewer"):
        ntk.matrix(tiny_mlp, tiny_data.inputs)


def test_nan_model_is_reported(tiny_mlp, tiny_data):
    with torch.no_grad():
        tiny_mlp[0].weight[0, 0] = float("nan")
    for kind in ("trace", "pseudo"):
        with pytest.raises(NonFiniteGradientError, match="example 0"):
            EmpiricalNTK(kind).matrix(tiny_mlp, tiny_data.inputs)


def test_nan_and_constant_kernels_are_reported():
    kernel = torch.eye(4, dtype=torch.float64)
    kernel[1, 2] = float("nan")
    with pytest.raises(DegenerateKernelError, match="1 non-finite entries"):
        check_kernel(kernel)
    with pytest.raises(DegenerateKernelError, match="constant"):
        check_kernel(torch.full((4, 4), 2.5, dtype=torch.float64))
    torch.testing.assert_close(check_kernel(torch.eye(3)), torch.eye(3))


def test_identical_inputs_give_a_constant_kernel():
    model = build_model(lambda: LogisticRegression(5, 3), seed=0, dtype=torch.float64)
    inputs = torch.ones(6, 5, dtype=torch.float64)
    gram = EmpiricalNTK("trace").matrix(model, inputs)
    torch.testing.assert_close(gram, torch.full((6, 6), 3.0 * (5 + 1), dtype=torch.float64))
    with pytest.raises(DegenerateKernelError, match="constant"):
        check_kernel(gram)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind"):
        EmpiricalNTK("diagonal")
    with pytest.raises(ValueError, match="chunk_size"):
        EmpiricalNTK(chunk_size=0)


@pytest.mark.parametrize("kind", ["trace", "pseudo"])
def test_inputs_of_another_float_dtype_are_refused(tiny_mlp, tiny_data, kind):
    """torch's "mat1 and mat2 must have the same dtype" came from the first forward pass."""
    single = tiny_data.inputs.float()
    with pytest.raises(ValueError, match="torch.float64 but the inputs are torch.float32"):
        EmpiricalNTK(kind).matrix(tiny_mlp, single)
    with pytest.raises(ValueError, match="torch.float64 but the inputs are torch.float32"):
        next(iter_output_jacobians(tiny_mlp, single))
