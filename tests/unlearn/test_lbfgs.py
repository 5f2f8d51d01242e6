"""The compact-form L-BFGS: its direction equals the two-loop recursion's, and it reaches the
exact minimiser of strongly convex problems, also when the values carry rounding noise."""

import pytest
import torch

from unlearn.predictors.lbfgs import History, minimize


def _two_loop(steps, changes, gradient):
    """The textbook two-loop recursion (Nocedal and Wright, Algorithm 7.4), H0 = gamma I."""
    q, alphas = gradient.clone(), []
    for s, y in reversed(list(zip(steps, changes, strict=True))):
        alpha = (s @ q) / (y @ s)
        q = q - alpha * y
        alphas.append(alpha)
    gamma = (steps[-1] @ changes[-1]) / (changes[-1] @ changes[-1])
    r = gamma * q
    for (s, y), alpha in zip(zip(steps, changes, strict=True), reversed(alphas), strict=True):
        beta = (y @ r) / (y @ s)
        r = r + s * (alpha - beta)
    return r


@pytest.mark.parametrize("pairs", [1, 4, 9])
def test_the_direction_is_the_two_loop_recursions_also_past_a_full_history(pairs):
    generator = torch.Generator().manual_seed(pairs)
    size = 12
    matrix = torch.randn(size, size, generator=generator, dtype=torch.float64)
    hessian = matrix @ matrix.T + 0.5 * torch.eye(size, dtype=torch.float64)
    history = History(4, torch.zeros(size, dtype=torch.float64))
    steps, changes = [], []
    for _ in range(pairs):
        step = torch.randn(size, generator=generator, dtype=torch.float64)
        steps.append(step)
        changes.append(hessian @ step)  # s.y > 0, as on a strongly convex objective
        history.add(steps[-1], changes[-1])
    gradient = torch.randn(size, generator=generator, dtype=torch.float64)
    expected = _two_loop(steps[-4:], changes[-4:], gradient)
    torch.testing.assert_close(history.apply(gradient), expected, rtol=1e-10, atol=1e-12)


def _quadratic(noise: float = 0.0):
    """``x -> (1/2 x'Ax - b'x, Ax - b)``, the value rounded to a multiple of ``noise``."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    hessian = matrix @ matrix.T / 30 + 1e-2 * torch.eye(30, dtype=torch.float64)
    linear = torch.randn(30, generator=generator, dtype=torch.float64)

    def objective(x):
        value = 0.5 * x @ hessian @ x - linear @ x
        return (torch.round(value / noise) * noise if noise else value), hessian @ x - linear

    return objective, torch.linalg.solve(hessian, linear)


@pytest.mark.parametrize("noise", [0.0, 1e-4])
def test_it_reaches_the_minimiser_even_when_the_values_are_rounded(noise):
    """Rounded values cannot show the last decreases; convexity lets the gradient certify
    them (f(x + s) <= f(x) + g(x + s)'s)."""
    objective, solution = _quadratic(noise)
    found = minimize(objective, torch.zeros(30, dtype=torch.float64), 500)
    assert float((found - solution).abs().max()) < 1e-8
    assert float(objective(found)[1].abs().max()) <= 1e-10


def test_it_stops_after_the_iterations_allowed():
    objective, solution = _quadratic()
    start = torch.zeros(30, dtype=torch.float64)
    assert float((minimize(objective, start, 3) - solution).abs().max()) > 1e-3
    assert float((minimize(objective, start, 300) - solution).abs().max()) < 1e-8


def test_a_step_along_a_linear_stretch_stays_out_of_the_history():
    """The Huber loss is linear far from its minimum: the first step's gradient change is zero
    (no curvature), which must not enter the history (0 / 0 in the scaling)."""

    def huber(x):
        offset = x - 3.0
        inside = offset.abs() <= 1
        value = torch.where(inside, offset.square() / 2, offset.abs() - 0.5).sum()
        return value, torch.where(inside, offset, offset.sign())

    found = minimize(huber, torch.full((2,), 10.0, dtype=torch.float64), 50)
    torch.testing.assert_close(found, torch.full((2,), 3.0, dtype=torch.float64))
