import numpy as np
import pytest
import torch

from tda.curvature import SolverDivergedError
from tda.eval import lds
from tda.eval.damping import select_damping

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
BEST = 1e-1


def linear_problem(n_query=40, n_train=50, count=60, seed=0):
    """Outputs linear in the masks plus retraining noise: outputs = masks @ w.T + noise."""
    rng = np.random.default_rng(seed)
    masks = rng.random((count, n_train)) < 0.5
    weights = rng.normal(size=(n_query, n_train))
    outputs = masks @ weights.T + rng.normal(scale=0.5, size=(count, n_query))
    return weights, masks, outputs


def scorer(weights, calls=None):
    """scores(lambda) = w + noise(lambda) whose size grows with |log10(lambda / BEST)|."""
    noise = np.random.default_rng(1).normal(size=weights.shape)

    def score_with(damping: float) -> torch.Tensor:
        if calls is not None:
            calls.append(damping)
        scale = 3.0 * abs(np.log10(damping / BEST))
        return torch.from_numpy(weights + scale * noise)

    return score_with


def test_picks_the_damping_with_the_least_noise_and_reports_on_the_held_out_part():
    weights, masks, outputs = linear_problem()
    calls = []
    choice = select_damping(scorer(weights, calls), GRID, masks, outputs)
    assert choice.damping == BEST
    assert calls == list(GRID)  # one scoring per grid value
    curve = [result.mean for result in choice.selection]
    selected = lds(weights, masks[choice.selection_subsets], outputs[choice.selection_subsets])
    assert curve[2] == selected.mean > 0.9
    assert max(curve[:2] + curve[3:]) < selected.mean - 0.2
    # The report is the plain LDS of the chosen scores on the report subsets only.
    report = lds(weights, masks[choice.report_subsets], outputs[choice.report_subsets])
    assert choice.report.mean == report.mean and choice.report.n_subsets == 30
    assert (choice.report.ci_low, choice.report.ci_high) == (report.ci_low, report.ci_high)
    assert choice.failures == {} and "damping 0.1 chosen" in str(choice)


def test_selection_and_report_subsets_are_disjoint_and_cover_the_ground_truth():
    weights, masks, outputs = linear_problem(count=41)
    choice = select_damping(
        scorer(weights), GRID, masks, outputs[:, None, :], holdout_fraction=0.25
    )
    selected, reported = set(choice.selection_subsets), set(choice.report_subsets)
    assert not selected & reported
    assert selected | reported == set(range(41))
    assert len(reported) == round(0.25 * 41)
    np.testing.assert_array_equal(choice.selection_queries, np.arange(40))
    np.testing.assert_array_equal(choice.report_queries, np.arange(40))


def test_query_and_both_splits_hold_out_what_they_say():
    weights, masks, outputs = linear_problem()
    by_query = select_damping(scorer(weights), GRID, masks, outputs, split="queries")
    assert not set(by_query.selection_queries) & set(by_query.report_queries)
    assert by_query.report.n_queries == 20 and by_query.report.n_subsets == 60
    both = select_damping(scorer(weights), GRID, masks, outputs, split="both")
    assert not set(both.selection_queries) & set(both.report_queries)
    assert not set(both.selection_subsets) & set(both.report_subsets)
    assert both.report.n_queries == 20 and both.report.n_subsets == 30
    assert by_query.damping == both.damping == BEST


def test_same_seed_same_choice_and_another_seed_another_split():
    weights, masks, outputs = linear_problem()
    first = select_damping(scorer(weights), GRID, masks, outputs, seed=3)
    again = select_damping(scorer(weights), GRID, masks, outputs, seed=3)
    other = select_damping(scorer(weights), GRID, masks, outputs, seed=4)
    np.testing.assert_array_equal(first.report_subsets, again.report_subsets)
    assert first.report.mean == again.report.mean
    assert [r.mean for r in first.selection] == [r.mean for r in again.selection]
    assert not np.array_equal(first.report_subsets, other.report_subsets)


def test_diverged_values_are_recorded_and_skipped():
    weights, masks, outputs = linear_problem()
    score = scorer(weights)

    def diverging_below_one(damping):
        if damping < 1.0:
            raise SolverDivergedError("LiSSA diverged")
        return score(damping)

    choice = select_damping(diverging_below_one, GRID, masks, outputs)
    assert choice.damping == 1.0
    assert choice.selection[:3] == (None, None, None)
    assert set(choice.failures) == {1e-3, 1e-2, 1e-1}
    with pytest.raises(ValueError, match="every damping"):
        select_damping(diverging_below_one, (1e-3, 1e-2), masks, outputs)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ((), "empty"),
        ((0.1, -1.0), "non-negative"),
        ((0.1, float("nan")), "finite"),
        ((0.1, float("inf")), "finite"),
        ((0.1, 1.0, 0.1), "repeats"),
    ],
)
def test_bad_grid_is_refused(grid, message):
    weights, masks, outputs = linear_problem()
    with pytest.raises(ValueError, match=message):
        select_damping(scorer(weights), grid, masks, outputs)


def test_bad_split_settings_are_refused():
    weights, masks, outputs = linear_problem(count=6)
    with pytest.raises(ValueError, match="strictly between"):
        select_damping(scorer(weights), GRID, masks, outputs, holdout_fraction=1.0)
    with pytest.raises(ValueError, match="cannot split 6 subsets"):
        select_damping(scorer(weights), GRID, masks, outputs, holdout_fraction=0.2)
    with pytest.raises(ValueError, match="split must be"):
        select_damping(scorer(weights), GRID, masks, outputs, split="seeds")
    with pytest.raises(ValueError, match="do not match masks"):
        select_damping(scorer(weights), GRID, masks[:5], outputs)
    with pytest.raises(ValueError, match=r"returned shape \(39, 50\)"):
        select_damping(lambda d: weights[:39], GRID, masks, outputs)
