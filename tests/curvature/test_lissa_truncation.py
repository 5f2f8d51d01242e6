"""LiSSA's truncation bound: the exact error of the recursion, and the warning built on it."""

import warnings

import pytest
import torch

from tda.curvature import (
    ExplicitSolver,
    LiSSASolver,
    SolverConvergenceWarning,
    SolverDivergedError,
    explicit_curvature,
    lissa,
    lissa_required_depth,
    lissa_truncation,
)
from tda.task import ClassificationTask

TASK = ClassificationTask()


def smallest_depth(damping, scale, tolerance=0.01):
    """The oracle: count up until (1 - damping/scale)^(depth+1) <= tolerance."""
    depth = 0
    while abs(1 - damping / scale) ** (depth + 1) > tolerance:
        depth += 1
    return depth


@pytest.mark.parametrize("depth", [0, 1, 7, 40])
def test_truncation_is_the_exact_error_of_the_recursion_per_eigenvalue(depth):
    """On A = diag(a) the estimate of A⁻¹b misses exactly (1 - a/s)^(depth+1) of each entry."""
    eigenvalues = torch.tensor([0.05, 0.3, 1.0, 1.7], dtype=torch.float64)
    rhs = torch.ones(1, 4, dtype=torch.float64)
    estimate = lissa(lambda v, step: v * eigenvalues, rhs, scale=1.0, depth=depth)
    missed = 1 - estimate[0] * eigenvalues  # the fraction of 1/a left out
    expected = torch.tensor(
        [lissa_truncation(float(a), 1.0, depth) for a in eigenvalues], dtype=torch.float64
    )
    signs = torch.sign(1 - eigenvalues) ** (depth + 1)  # a > s oscillates: (1 - a/s) < 0
    torch.testing.assert_close(missed, signs * expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("damping", "scale"), [(0.01, 1.0), (0.01, 10.0), (0.3, 0.2), (1.0, 1.0)])
def test_required_depth_is_the_smallest_that_reaches_the_tolerance(damping, scale):
    assert lissa_required_depth(damping, scale) == smallest_depth(damping, scale)
    assert lissa_required_depth(0.01, 1.0) == 458  # 0.99^459 = 0.00992, 0.99^458 = 0.01002


def test_no_depth_converges_without_damping_or_with_a_diverging_scale():
    assert lissa_required_depth(0.0, 1.0) is None
    assert lissa_required_depth(2.5, 1.0) is None


def test_a_shallow_recursion_warns_with_the_depth_it_needs():
    with pytest.warns(SolverConvergenceWarning) as caught:
        LiSSASolver(damping=0.01, scale=1.0, depth=457)
    message = str(caught[0].message)
    for part in ("depth=457", "scale=1", "damping=0.01", "use depth >= 458", "0.01"):
        assert part in message
    with pytest.warns(SolverConvergenceWarning, match="no depth is enough"):
        LiSSASolver(damping=0.0, scale=1.0, depth=10_000)


def test_a_deep_enough_recursion_does_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LiSSASolver(damping=0.01, scale=1.0, depth=458)
        LiSSASolver(damping=0.01, scale=10.0, depth=smallest_depth(0.01, 10.0))
    assert [str(w.message) for w in caught] == []


def test_at_the_required_depth_the_error_is_within_the_tolerance(tiny_mlp, tiny_data):
    """Full batch, scale above the top eigenvalue: each mode is within 1%, so the whole solve is."""
    largest = float(torch.linalg.eigvalsh(explicit_curvature(tiny_mlp, TASK, tiny_data))[-1])
    scale = largest + 0.01
    depth = lissa_required_depth(0.01, scale)
    solver = LiSSASolver(damping=0.01, scale=scale, depth=depth, batch_size=len(tiny_data))
    rhs = torch.randn(3, 83, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = ExplicitSolver(damping=0.01).fit(tiny_mlp, TASK, tiny_data).solve(rhs)
    estimate = solver.fit(tiny_mlp, TASK, tiny_data).solve(rhs)
    assert float((estimate - exact).norm() / exact.norm()) <= 0.01


def test_divergence_is_still_raised_by_a_deep_enough_solver(tiny_mlp, tiny_data):
    """The warning is about depth; a scale below half the top eigenvalue still raises."""
    largest = float(torch.linalg.eigvalsh(explicit_curvature(tiny_mlp, TASK, tiny_data))[-1])
    scale = largest / 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver = LiSSASolver(
            damping=0.01, scale=scale, depth=lissa_required_depth(0.01, scale), batch_size=20
        )
    rhs = torch.ones(2, 83, dtype=torch.float64)
    with pytest.raises(SolverDivergedError, match="increase `scale`"):
        solver.fit(tiny_mlp, TASK, tiny_data).solve(rhs)
