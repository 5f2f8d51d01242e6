"""Curvature products and inverse-HVP solvers against explicit float64 oracles from autograd."""

import math
import warnings

import pytest
import torch

import tda.curvature.explicit as explicit_module
from tda.curvature import (
    ConjugateGradientSolver,
    DiagonalSolver,
    EKFACSolver,
    ExplicitSolver,
    IdentitySolver,
    KFACSolver,
    LiSSASolver,
    NotPositiveDefiniteError,
    SolverConvergenceWarning,
    SolverDivergedError,
    conjugate_gradient,
    curvature_vector_product,
    explicit_curvature,
    gauss_newton_diagonal,
    gauss_newton_vector_product,
    hessian_vector_product,
)
from tda.data import Examples
from tda.grads import NonFiniteGradientError, VmapFallbackWarning
from tda.models import LogisticRegression, build_model
from tda.task import ClassificationTask

TASK = ClassificationTask()
DAMPING = 0.01


def flat_parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def logits_at(model, flat, inputs):
    """Logits with the model's parameters replaced by the flat vector (model order)."""
    named, offset, values = list(model.named_parameters()), 0, {}
    for name, p in named:
        values[name] = flat[offset : offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    return torch.func.functional_call(model, values, (inputs,))


def hessian_oracle(model, data):
    """Exact Hessian of the mean loss from torch.autograd.functional.hessian."""

    def mean_loss(flat):
        return TASK.loss(logits_at(model, flat, data.inputs), data.targets).mean()

    return torch.autograd.functional.hessian(mean_loss, flat_parameters(model))


def gauss_newton_oracle(model, data):
    """(1/n) Σ J_iᵀ H_out,i J_i with explicit Jacobians and logit Hessians."""
    jacobian = torch.autograd.functional.jacobian(
        lambda flat: logits_at(model, flat, data.inputs), flat_parameters(model)
    )  # [n, C, p]
    logits = model(data.inputs).detach()
    total = 0.0
    for i in range(len(data)):
        output_hessian = torch.autograd.functional.hessian(
            lambda o, i=i: TASK.loss(o, data.targets[i]), logits[i]
        )
        total = total + jacobian[i].T @ output_hessian @ jacobian[i]
    return total / len(data)


@pytest.fixture
def tiny_linear():
    """6-input, 3-class float64 logistic regression (21 parameters)."""
    return build_model(lambda: LogisticRegression(6, 3), seed=0, dtype=torch.float64)


@pytest.fixture
def vectors():
    return torch.randn(4, 83, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


EVERY_SOLVER = (
    ExplicitSolver(),
    ConjugateGradientSolver(),
    LiSSASolver(depth=4602),
    DiagonalSolver(),
    IdentitySolver(),
    KFACSolver(),
    EKFACSolver(),
)
"""One of each solver (refitted by every test that takes it)."""


def right_hand_sides(model, count=4):
    size = sum(p.numel() for p in model.parameters())
    return torch.randn(count, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_hessian_vector_product_equals_autograd_hessian(tiny_mlp, tiny_data, vectors):
    product = hessian_vector_product(tiny_mlp, TASK, tiny_data, None, vectors, chunk_size=7)
    expected = vectors @ hessian_oracle(tiny_mlp, tiny_data)
    torch.testing.assert_close(product, expected, rtol=1e-10, atol=1e-12)


def test_gauss_newton_product_equals_explicit_jacobian_form(tiny_mlp, tiny_data, vectors):
    product = gauss_newton_vector_product(tiny_mlp, TASK, tiny_data, None, vectors, chunk_size=7)
    expected = vectors @ gauss_newton_oracle(tiny_mlp, tiny_data)
    torch.testing.assert_close(product, expected, rtol=1e-10, atol=1e-12)
    hessian = hessian_vector_product(tiny_mlp, TASK, tiny_data, None, vectors)
    assert (product - hessian).abs().max() > 1e-3  # the MLP's Hessian has a non-GGN part


def test_curvature_of_a_model_with_a_tied_weight_counts_both_uses(tiny_tied, tiny_data):
    vectors = right_hand_sides(tiny_tied)
    for curvature, oracle in (("hessian", hessian_oracle), ("gauss_newton", gauss_newton_oracle)):
        product = curvature_vector_product(tiny_tied, TASK, tiny_data, vectors, curvature=curvature)
        expected = vectors @ oracle(tiny_tied, tiny_data)
        torch.testing.assert_close(product, expected, rtol=1e-10, atol=1e-12)
    diagonal = gauss_newton_diagonal(tiny_tied, TASK, tiny_data)
    expected = gauss_newton_oracle(tiny_tied, tiny_data).diagonal()
    torch.testing.assert_close(diagonal, expected, rtol=1e-10, atol=1e-12)


def test_hessian_equals_gauss_newton_for_a_linear_model(tiny_linear, tiny_data):
    hessian = explicit_curvature(tiny_linear, TASK, tiny_data, curvature="hessian")
    gauss_newton = explicit_curvature(tiny_linear, TASK, tiny_data, curvature="gauss_newton")
    torch.testing.assert_close(hessian, gauss_newton, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        hessian, hessian_oracle(tiny_linear, tiny_data), rtol=1e-10, atol=1e-12
    )


def test_parameter_selection_restricts_the_curvature_block(tiny_mlp, tiny_data):
    names = ["2.weight", "2.bias"]  # last layer: 8 * 3 + 3 = 27 coordinates, the last 27 of 83
    block = explicit_curvature(tiny_mlp, TASK, tiny_data, parameters=names)
    full = gauss_newton_oracle(tiny_mlp, tiny_data)
    torch.testing.assert_close(block, full[-27:, -27:], rtol=1e-10, atol=1e-12)


def test_explicit_solver_inverts_the_damped_oracle(tiny_mlp, tiny_data, vectors):
    solved = ExplicitSolver(damping=DAMPING).fit(tiny_mlp, TASK, tiny_data).solve(vectors)
    matrix = gauss_newton_oracle(tiny_mlp, tiny_data) + DAMPING * torch.eye(83, dtype=torch.float64)
    torch.testing.assert_close(solved, torch.linalg.solve(matrix, vectors.T).T, rtol=1e-8, atol=0)


@pytest.mark.parametrize("model_name", ["tiny_mlp", "tiny_linear"])
def test_conjugate_gradient_matches_explicit(request, model_name, tiny_data):
    model = request.getfixturevalue(model_name)
    rhs = right_hand_sides(model)
    exact = ExplicitSolver(damping=DAMPING).fit(model, TASK, tiny_data).solve(rhs)
    solver = ConjugateGradientSolver(damping=DAMPING, tol=1e-10).fit(model, TASK, tiny_data)
    torch.testing.assert_close(solver.solve(rhs), exact, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("model_name", ["tiny_mlp", "tiny_linear"])
def test_lissa_matches_explicit(request, model_name, tiny_data):
    model = request.getfixturevalue(model_name)
    rhs = right_hand_sides(model)
    curvature = explicit_curvature(model, TASK, tiny_data)
    largest = float(torch.linalg.eigvalsh(curvature)[-1]) + DAMPING
    scale = 0.75 * largest  # convergent: all eigenvalues in (0, 2 * scale)
    depth = math.ceil(math.log(1e-6) / math.log(1 - DAMPING / scale))  # slowest mode: λ / scale
    solver = LiSSASolver(damping=DAMPING, scale=scale, depth=depth, batch_size=len(tiny_data))
    exact = ExplicitSolver(damping=DAMPING).fit(model, TASK, tiny_data).solve(rhs)
    error = (solver.fit(model, TASK, tiny_data).solve(rhs) - exact).norm() / exact.norm()
    assert error < 2e-6


@pytest.mark.filterwarnings("ignore::tda.curvature.SolverConvergenceWarning")  # depth 30
def test_stochastic_lissa_is_reproducible_under_its_seed(tiny_mlp, tiny_data, vectors):
    def run(seed, rows):
        solver = LiSSASolver(scale=2.0, depth=30, batch_size=5, repeats=2, seed=seed)
        return solver.fit(tiny_mlp, TASK, tiny_data).solve(rows)

    first = run(0, vectors)
    assert torch.equal(first, run(0, vectors))
    assert not torch.allclose(first, run(1, vectors))
    torch.testing.assert_close(run(0, vectors[2:]), first[2:], rtol=1e-12, atol=1e-14)


def test_lissa_with_too_small_a_scale_raises_and_names_scale(tiny_mlp, tiny_data, vectors):
    largest = float(torch.linalg.eigvalsh(explicit_curvature(tiny_mlp, TASK, tiny_data))[-1])
    solver = LiSSASolver(scale=largest / 4, depth=500, batch_size=len(tiny_data))
    with pytest.raises(SolverDivergedError, match="increase `scale`"):
        solver.fit(tiny_mlp, TASK, tiny_data).solve(vectors)


def test_explicit_refuses_oversize_models_with_the_memory_needed(tiny_mlp, tiny_data):
    with pytest.raises(ValueError, match=r"p=83 parameters.*GiB.*ConjugateGradientSolver"):
        ExplicitSolver(max_parameters=50).fit(tiny_mlp, TASK, tiny_data)


def test_indefinite_hessian_is_refused_by_explicit_and_conjugate_gradient(tiny_mlp, tiny_data):
    assert float(torch.linalg.eigvalsh(hessian_oracle(tiny_mlp, tiny_data))[0]) < -0.1
    with pytest.raises(NotPositiveDefiniteError, match="gauss_newton"):
        ExplicitSolver(curvature="hessian", damping=0.0).fit(tiny_mlp, TASK, tiny_data)
    solver = ConjugateGradientSolver(curvature="hessian", damping=0.0, max_iter=500)
    with pytest.raises(NotPositiveDefiniteError):
        solver.fit(tiny_mlp, TASK, tiny_data).solve(right_hand_sides(tiny_mlp))
    # Damping past the most negative eigenvalue makes the Hessian usable.
    ExplicitSolver(curvature="hessian", damping=1.0).fit(tiny_mlp, TASK, tiny_data)


def test_conjugate_gradient_reports_non_convergence(tiny_mlp, tiny_data, vectors):
    strict = ConjugateGradientSolver(max_iter=2).fit(tiny_mlp, TASK, tiny_data)
    with pytest.raises(SolverDivergedError, match="max_iter=2"):
        strict.solve(vectors)
    lenient = ConjugateGradientSolver(max_iter=2, strict=False).fit(tiny_mlp, TASK, tiny_data)
    with pytest.warns(SolverConvergenceWarning):
        assert torch.isfinite(lenient.solve(vectors)).all()


def test_conjugate_gradient_function_solves_a_known_system():
    generator = torch.Generator().manual_seed(0)
    factor = torch.randn(10, 10, generator=generator, dtype=torch.float64)
    matrix = factor @ factor.T + 0.1 * torch.eye(10, dtype=torch.float64)
    rhs = torch.randn(3, 10, generator=generator, dtype=torch.float64)
    rhs[1] = 0.0  # a zero right-hand side is solved by zero without iterating
    result = conjugate_gradient(lambda v: v @ matrix, rhs, tol=1e-12, max_iter=100)
    torch.testing.assert_close(result.solution, torch.linalg.solve(matrix, rhs.T).T)
    assert torch.equal(result.solution[1], torch.zeros(10, dtype=torch.float64))
    assert result.iterations <= 30


def test_diagonal_solver_divides_by_the_gauss_newton_diagonal(tiny_mlp, tiny_data, vectors):
    solver = DiagonalSolver(damping=DAMPING).fit(tiny_mlp, TASK, tiny_data)
    diagonal = torch.diagonal(gauss_newton_oracle(tiny_mlp, tiny_data))
    torch.testing.assert_close(solver.diagonal, diagonal, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(solver.solve(vectors), vectors / (diagonal + DAMPING))


def test_diagonal_solver_empirical_fisher_is_mean_squared_loss_gradient(tiny_mlp, tiny_data):
    solver = DiagonalSolver("empirical_fisher", damping=DAMPING).fit(tiny_mlp, TASK, tiny_data)
    squares = 0.0
    for x, y in zip(tiny_data.inputs, tiny_data.targets, strict=True):
        loss = TASK.loss(tiny_mlp(x[None])[0], y)
        gradient = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(loss, list(tiny_mlp.parameters()))]
        )
        squares = squares + gradient**2
    torch.testing.assert_close(solver.diagonal, squares / len(tiny_data), rtol=1e-10, atol=1e-14)


def test_identity_solver_divides_by_damping(tiny_mlp, tiny_data, vectors):
    solved = IdentitySolver(damping=4.0).fit(tiny_mlp, TASK, tiny_data).solve(vectors)
    assert torch.equal(solved, vectors / 4.0)


@pytest.mark.parametrize(
    "solver",
    [
        ExplicitSolver(),
        ConjugateGradientSolver(),
        LiSSASolver(depth=4602),  # deep enough for the default damping and scale
        DiagonalSolver(),
        IdentitySolver(),
    ],
)
def test_solvers_refuse_solving_before_fit_and_wrong_widths(solver, tiny_mlp, tiny_data):
    with pytest.raises(RuntimeError, match="fit"):
        solver.solve(torch.zeros(1, 83, dtype=torch.float64))
    solver.fit(tiny_mlp, TASK, tiny_data)
    with pytest.raises(ValueError, match=r"\[q, 83\]"):
        solver.solve(torch.zeros(1, 82, dtype=torch.float64))


@pytest.mark.parametrize("solver", EVERY_SOLVER, ids=lambda solver: type(solver).__name__)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_solvers_refuse_non_finite_vectors_naming_the_row(solver, bad, tiny_mlp, tiny_data):
    """Conjugate gradient used to stop at once on such a row and return it solved as zeros."""
    fitted = solver.fit(tiny_mlp, TASK, tiny_data)
    vectors = torch.ones(3, 83, dtype=torch.float64)
    vectors[1, 5] = bad
    with pytest.raises(ValueError, match="row 1 holds NaN or infinity"):
        fitted.solve(vectors)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_conjugate_gradient_refuses_a_non_finite_right_hand_side(bad):
    rhs = torch.ones(2, 4, dtype=torch.float64)
    rhs[0, 2] = bad
    with pytest.raises(ValueError, match="row 0 holds NaN or infinity"):
        conjugate_gradient(lambda v: 2.0 * v, rhs, tol=1e-10, max_iter=10)


def test_solvers_validate_hyperparameters():
    with pytest.raises(ValueError, match="damping"):
        ExplicitSolver(damping=-1.0)
    with pytest.raises(ValueError, match="curvature"):
        ConjugateGradientSolver(curvature="fisher")
    with pytest.raises(ValueError, match="scale"):
        LiSSASolver(scale=0.0)


def test_empty_data_is_refused(tiny_mlp, vectors):
    empty = Examples(torch.zeros(0, 6, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        hessian_vector_product(tiny_mlp, TASK, empty, None, vectors)


@pytest.mark.parametrize("solver", EVERY_SOLVER, ids=lambda solver: type(solver).__name__)
def test_solvers_map_no_vectors_to_no_vectors(solver, tiny_mlp, tiny_data):
    """``[0, p] -> [0, p]`` like any other ``q``: K-FAC, EK-FAC and LiSSA failed in a reshape."""
    solved = solver.fit(tiny_mlp, TASK, tiny_data).solve(torch.zeros(0, 83, dtype=torch.float64))
    assert solved.shape == (0, 83) and solved.dtype == torch.float64


@pytest.mark.parametrize("product", [hessian_vector_product, gauss_newton_vector_product])
def test_curvature_products_of_no_vectors_are_empty(product, tiny_mlp, tiny_data):
    result = product(tiny_mlp, TASK, tiny_data, None, torch.zeros(0, 83, dtype=torch.float64))
    assert result.shape == (0, 83)


@pytest.mark.parametrize("curvature", ["gauss_newton", "empirical_fisher"])
def test_diagonal_solver_names_a_non_finite_diagonal_not_zero_curvature(
    curvature, tiny_mlp, tiny_data
):
    """A target outside the classes turns the diagonal NaN; it was refused as "zero entries",
    with advice to use damping > 0 although the damping was already 0.01."""
    targets = tiny_data.targets.clone()
    targets[4] = 7  # 3 classes
    with pytest.raises(ValueError, match="not finite") as caught:
        DiagonalSolver(curvature).fit(tiny_mlp, TASK, Examples(tiny_data.inputs, targets))
    assert "damping" not in str(caught.value)


@pytest.mark.parametrize(
    "solver",
    [ExplicitSolver(), ConjugateGradientSolver(), LiSSASolver(depth=4602)],
    ids=lambda solver: type(solver).__name__,
)
def test_a_target_outside_the_classes_is_named_not_blamed_on_the_damping(
    solver, tiny_mlp, tiny_data, vectors
):
    """It turns the curvature NaN: explicit failed with a raw LinAlgError from eigh, conjugate
    gradient said to raise the damping and LiSSA to increase `scale`."""
    targets = tiny_data.targets.clone()
    targets[4] = 7  # 3 classes
    with pytest.raises(NonFiniteGradientError, match="outside the model's classes"):
        solver.fit(tiny_mlp, TASK, Examples(tiny_data.inputs, targets)).solve(vectors)


MODEL_SOLVERS = (*(s for s in EVERY_SOLVER if not isinstance(s, IdentitySolver)),
                 DiagonalSolver(curvature="empirical_fisher"))  # fmt: skip
"""Every solver that runs the model on the training examples."""


@pytest.mark.parametrize("solver", MODEL_SOLVERS, ids=lambda solver: type(solver).__name__)
def test_solvers_refuse_inputs_of_another_float_dtype_at_fit(solver, tiny_mlp, tiny_data):
    """torch's "mat1 and mat2 must have the same dtype" came from inside the fit (after a
    warning that vmap could not batch the products), or first at solve for CG and LiSSA."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", VmapFallbackWarning)
        with pytest.raises(ValueError, match="are torch.float32 but the inputs are torch.float64"):
            solver.fit(tiny_mlp.float(), TASK, tiny_data)


def test_curvature_products_refuse_float64_inputs_on_a_float32_model(tiny_mlp, tiny_data):
    """The mismatch failed inside the forward pass, where vmap's fallback loop hit it again."""
    vectors = torch.zeros(2, 83)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VmapFallbackWarning)
        for curvature in ("gauss_newton", "hessian"):
            with pytest.raises(
                ValueError, match="are torch.float32 but the inputs are torch.float64"
            ):
                curvature_vector_product(
                    tiny_mlp.float(), TASK, tiny_data, vectors, curvature=curvature
                )


class _RecordingTorch:
    """``torch`` for one module, recording the shapes of the tensors it allocates."""

    def __init__(self) -> None:
        self.allocated = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def empty(self, *size, **options):
        self.allocated.append(size)
        return torch.empty(*size, **options)

    def zeros(self, *size, **options):
        self.allocated.append(size)
        return torch.zeros(*size, **options)


def test_explicit_curvature_refuses_float64_inputs_before_allocating_the_matrix(
    tiny_mlp, tiny_data, monkeypatch
):
    recording = _RecordingTorch()
    monkeypatch.setattr(explicit_module, "torch", recording)
    explicit_curvature(tiny_mlp, TASK, tiny_data, block_size=100)  # the recorder sees the matrix
    assert recording.allocated[:2] == [(83, 83), (83, 83)]  # the matrix, then one identity block
    recording.allocated.clear()
    with pytest.raises(ValueError, match="are torch.float32 but the inputs are torch.float64"):
        explicit_curvature(tiny_mlp.float(), TASK, tiny_data)
    assert recording.allocated == []


def test_a_failing_forward_pass_is_not_blamed_on_vmap(tiny_data):
    """Any RuntimeError fell back to a loop over the vectors with a warning that vmap could
    not batch the products, before the loop failed the same way."""
    model = torch.nn.Linear(5, 3).double()  # the examples have 6 features
    with warnings.catch_warnings():
        warnings.simplefilter("error", VmapFallbackWarning)
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            curvature_vector_product(model, TASK, tiny_data, torch.zeros(2, 18).double())
