import importlib

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tda.datamodels import sample_subsets
from tda.eval import LDSResult, lds, noise_ceiling, predict_subset_outputs


def linear_problem(n_query=30, n_train=40, count=50, seed=0):
    """Outputs exactly linear in the masks: outputs[j, q] = sum_{i in S_j} w[q, i] + b[q]."""
    rng = np.random.default_rng(seed)
    masks = rng.random((count, n_train)) < 0.5
    weights = rng.normal(size=(n_query, n_train))
    outputs = masks.astype(np.float64) @ weights.T + rng.normal(size=n_query)
    return weights, masks, outputs


def test_exact_linear_scores_give_one_and_negated_scores_minus_one():
    weights, masks, outputs = linear_problem()
    result = lds(weights, masks, outputs)
    assert result.mean == 1.0
    assert (result.ci_low, result.ci_high) == (1.0, 1.0)
    np.testing.assert_array_equal(result.per_query, np.ones(30))
    assert lds(-weights, masks, outputs).mean == -1.0


def test_random_scores_give_lds_near_zero():
    weights, masks, outputs = linear_problem(n_query=200, count=100)
    scores = np.random.default_rng(1).normal(size=weights.shape)
    result = lds(scores, masks, outputs)
    # 200 queries x 100 subsets: standard error of the mean ~ 0.1 / sqrt(200) ~ 0.007
    assert abs(result.mean) < 0.05


def test_per_query_matches_scipy_spearman_with_ties():
    rng = np.random.default_rng(2)
    masks = rng.random((25, 15)) < 0.5
    scores = rng.integers(-2, 3, size=(6, 15)).astype(float)  # integer scores make tied sums
    outputs = rng.integers(0, 4, size=(25, 6)).astype(float)  # and tied outputs
    predicted = masks.astype(float) @ scores.T
    oracle = [spearmanr(predicted[:, q], outputs[:, q]).statistic for q in range(6)]
    np.testing.assert_allclose(lds(scores, masks, outputs).per_query, oracle, rtol=0, atol=1e-12)


def test_predictions_are_subset_sums_of_scores():
    scores = np.array([[1.0, 2.0, 4.0], [-1.0, 0.5, 0.0]])
    masks = np.array([[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(predict_subset_outputs(scores, masks), [[5.0, -1.0], [6.0, 0.5]])


def test_interval_contains_mean_and_narrows_with_more_queries():
    weights, masks, outputs = linear_problem(n_query=400, count=40)
    noisy = weights + np.random.default_rng(3).normal(scale=2.0, size=weights.shape)
    few = lds(noisy[:20], masks, outputs[:, :20])
    many = lds(noisy, masks, outputs)
    for result in (few, many):
        assert result.ci_low < result.mean < result.ci_high
    assert many.ci_high - many.ci_low < 0.5 * (few.ci_high - few.ci_low)
    again = lds(noisy, masks, outputs)
    assert (again.ci_low, again.ci_high) == (many.ci_low, many.ci_high)  # seeded bootstrap


@pytest.mark.parametrize(("confidence", "percentiles"), [(0.95, [2.5, 97.5]), (0.8, [10, 90])])
def test_interval_is_the_central_percentile_interval_of_the_seeded_bootstrap_means(
    confidence, percentiles
):
    weights, masks, outputs = linear_problem(n_query=40, count=40)
    noisy = weights + np.random.default_rng(3).normal(scale=2.0, size=weights.shape)
    result = lds(noisy, masks, outputs, confidence=confidence, n_bootstrap=300, seed=7)
    assert result.n_excluded == 0
    # the bootstrap's draws: 300 resamples of the 40 query positions from a generator seeded 7
    draws = np.random.default_rng(7).integers(0, 40, (300, 40))
    means = [np.mean([result.per_query[q] for q in draw]) for draw in draws]
    np.testing.assert_allclose(
        (result.ci_low, result.ci_high), np.percentile(means, percentiles), rtol=1e-12
    )


def test_three_dimensional_outputs_are_averaged_over_seeds():
    weights, masks, outputs = linear_problem()
    noise = np.random.default_rng(4).normal(scale=3.0, size=(50, 3, 30))
    per_seed = outputs[:, None, :] + noise
    scores = weights + np.random.default_rng(5).normal(size=weights.shape)
    result = lds(scores, masks, per_seed)
    np.testing.assert_array_equal(result.per_query, lds(scores, masks, per_seed.mean(1)).per_query)
    assert result.n_seeds == 3
    assert lds(weights, masks, outputs[:, None, :].repeat(2, axis=1)).mean == 1.0


def test_invariant_to_positive_monotone_transforms_of_outputs():
    weights, masks, outputs = linear_problem()
    scores = weights + np.random.default_rng(6).normal(size=weights.shape)
    reference = lds(scores, masks, outputs).per_query
    for transformed in (np.exp(outputs / 5), 3 * outputs + 7, np.arctan(outputs)):
        np.testing.assert_allclose(lds(scores, masks, transformed).per_query, reference, atol=1e-12)


def test_constant_queries_are_excluded_and_counted():
    weights, masks, outputs = linear_problem(n_query=5)
    outputs[:, 1] = 2.0  # constant output
    weights[3] = 0.0  # constant prediction
    result = lds(weights, masks, outputs)
    assert result.n_excluded == 2 and result.n_queries == 5
    assert np.isnan(result.per_query[[1, 3]]).all()
    assert result.mean == 1.0
    assert "2 constant queries excluded" in str(result)
    with pytest.raises(ValueError, match="undefined for all 5 queries"):
        lds(np.zeros_like(weights), masks, outputs)


def test_float64_constant_score_rows_are_excluded_despite_rounding_in_the_subset_sums(
    monkeypatch,
):
    masks = sample_subsets(200, 0.5, 50, seed=0)  # every subset holds exactly 100 examples
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 200))
    scores[1], scores[2] = 0.1, 1 / 3  # each predicts the same sum for every subset

    def rounded(scores, masks):
        """Sums a few ulps apart, as a BLAS summing in another order gives (whether this
        machine's does depends on its BLAS, so the test makes them)."""
        predicted = predict_subset_outputs(scores, masks)
        predicted[::2, 1:3] = np.nextafter(np.nextafter(predicted[::2, 1:3], np.inf), np.inf)
        return predicted

    lds_module = importlib.import_module("tda.eval.lds")  # tda.eval.lds names the function
    monkeypatch.setattr(lds_module, "predict_subset_outputs", rounded)
    assert len(np.unique(rounded(scores, masks)[:, 1])) > 1  # the rounding this test is about
    outputs = rng.normal(size=(50, 4))
    result = lds(scores, masks, outputs)
    assert result.n_excluded == 2
    assert np.isnan(result.per_query[[1, 2]]).all()
    assert not np.isnan(result.per_query[[0, 3]]).any()


@pytest.mark.parametrize(
    ("scores_shape", "masks_shape", "outputs_shape", "message"),
    [
        ((4, 10), (6, 9), (6, 4), r"\(4, 10\) and masks \(6, 9\)"),
        ((4, 10), (6, 10), (5, 4), r"outputs have shape \(5, 4\)"),
        ((4, 10), (6, 10), (6, 3), r"outputs have shape \(6, 3\)"),
        ((4, 10), (6, 10), (6, 2, 3), r"outputs have shape \(6, 2, 3\)"),
        ((4, 10), (6, 10), (6,), "outputs must be"),
        ((10,), (6, 10), (6, 4), "scores must be 2-D"),
        ((4, 10), (2, 10), (2, 4), "at least 3 subsets"),
    ],
)
def test_shape_errors_name_the_shapes(scores_shape, masks_shape, outputs_shape, message):
    with pytest.raises(ValueError, match=message):
        lds(np.ones(scores_shape), np.ones(masks_shape, bool), np.ones(outputs_shape))


@pytest.mark.parametrize(
    ("scores_shape", "masks_shape", "outputs_shape", "message"),
    [
        ((4, 0), (6, 0), (6, 4), r"non-empty 2-D \[count, n_train\], got shape \(6, 0\)"),
        ((4, 10), (0, 10), (0, 4), "at least 3 subsets"),
        ((0, 10), (6, 10), (6, 0), "there are no queries"),
        ((4, 10), (6, 10), (6, 0, 4), r"\(6, 0, 4\) hold no retraining seed"),  # not "constant"
    ],
)
def test_empty_inputs_are_refused_with_a_clear_message(
    scores_shape, masks_shape, outputs_shape, message
):
    with pytest.raises(ValueError, match=message):
        lds(np.ones(scores_shape), np.ones(masks_shape, bool), np.ones(outputs_shape))


def test_non_finite_inputs_are_refused():
    weights, masks, outputs = linear_problem()
    weights[0, 0] = np.nan
    with pytest.raises(ValueError, match="scores hold 1 non-finite"):
        lds(weights, masks, outputs)
    outputs[0, 0] = np.inf
    with pytest.raises(ValueError, match="outputs hold 1 non-finite"):
        lds(np.ones((30, 40)), masks, outputs)


def test_torch_scores_are_accepted():
    weights, masks, outputs = linear_problem()
    result = lds(torch.from_numpy(weights).float(), masks, outputs)
    assert result.mean == pytest.approx(1.0, abs=1e-3)


def test_torch_masks_are_accepted_and_give_the_numpy_result():
    weights, masks, outputs = linear_problem()
    expected = lds(weights, masks, outputs)
    for torch_masks in (torch.from_numpy(masks), torch.from_numpy(masks).float()):
        result = lds(weights, torch_masks, outputs)  # the alpha failed: mean() got 'axis'
        assert result.mean == expected.mean and result.alpha == expected.alpha


def test_result_prints_its_context():
    weights, masks, outputs = linear_problem()
    result = lds(weights, masks, outputs[:, None, :].repeat(3, axis=1))
    assert isinstance(result, LDSResult)
    assert str(result).startswith(
        "LDS 1.000 [95% CI 1.000, 1.000] (30 queries, 50 subsets, 3 seeds"
    )


def test_noise_ceiling_of_identical_seeds_is_one():
    _, _, outputs = linear_problem()
    result = noise_ceiling(outputs[:, None, :].repeat(3, axis=1))
    assert result.mean == 1.0 and result.n_seeds == 3
    assert str(result).startswith("Noise ceiling 1.000")


def test_noise_ceiling_of_independent_seeds_is_near_zero():
    outputs = np.random.default_rng(7).normal(size=(100, 3, 200))
    result = noise_ceiling(outputs)
    assert abs(result.mean) < 0.05
    assert result.per_query.shape == (200,)


def test_noise_ceiling_matches_a_loop_oracle():
    outputs = np.random.default_rng(8).normal(size=(20, 3, 4))
    outputs[:, :, 0] += np.arange(20)[:, None] * 0.3  # a shared signal on one query
    oracle = [
        np.mean(
            [
                spearmanr(outputs[:, s, q], np.delete(outputs[:, :, q], s, 1).mean(1)).statistic
                for s in range(3)
            ]
        )
        for q in range(4)
    ]
    np.testing.assert_allclose(noise_ceiling(outputs).per_query, oracle, atol=1e-12)


def test_noise_ceiling_needs_two_seeds():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        noise_ceiling(np.ones((10, 1, 4)))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        noise_ceiling(np.ones((10, 4)))
