import math
from functools import partial

import numpy as np
import pytest
import torch

from tda.models import MLP, build_model
from tda.task import ClassificationTask
from tda.training import TrainConfig, train
from unlearn import klom, klom_by_split, klom_floor, klom_interval, klom_per_point, margins_of

EPSILON = 1e-5


def test_klom_per_point_matches_a_hand_computation():
    # Point 0: margins 0 and 1 span [0, 1] in 20 bins of 0.05; 0 -> bin 0, 1 -> bin 19.
    #   unlearned p = (1/2, 0 x 18, 1/2), oracle q = (1/4, 0 x 18, 3/4).
    # Point 1: every margin is 3: a zero-width range, both histograms identical.
    # Point 2: +-150 clip to +-100; unlearned all at -100, oracle all at +100.
    unlearned = np.array([[0, 3, -150], [0, 3, -150], [1, 3, -150], [1, 3, -120]], dtype=float)
    oracle = np.array([[0, 3, 150], [1, 3, 150], [1, 3, 150], [1, 3, 100]], dtype=float)
    z = 1 + 18 * EPSILON  # both histograms of point 0 have 18 empty bins floored to epsilon
    expected_0 = (0.5 / z) * math.log((0.5 / z) / (0.25 / z)) + (0.5 / z) * math.log(
        (0.5 / z) / (0.75 / z)
    )
    z2 = 1 + 19 * EPSILON  # point 2: one full bin each, at opposite ends
    expected_2 = (1 / z2) * math.log(1 / EPSILON) + (EPSILON / z2) * math.log(EPSILON / 1)
    values = klom_per_point(unlearned, oracle, epsilon=EPSILON)
    np.testing.assert_allclose(values, [expected_0, 0.0, expected_2], rtol=1e-12, atol=1e-15)
    # The direction is KL(unlearned || oracle): swapping the groups changes point 0.
    swapped = klom_per_point(oracle, unlearned, epsilon=EPSILON)
    expected_swapped = (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) / z
    assert swapped[0] == pytest.approx(expected_swapped, rel=1e-12)
    assert abs(swapped[0] - values[0]) > 1e-3
    assert klom(unlearned, oracle, epsilon=EPSILON) == pytest.approx(
        np.percentile(values, 95), rel=1e-12
    )


def test_groups_from_one_distribution_sit_at_the_floor_and_a_shift_is_clearly_higher():
    rng = np.random.default_rng(0)
    points, models = 400, 40
    centres = rng.normal(0, 5, size=points)  # each point has its own margin distribution
    draw = lambda shift=0.0: centres + shift + rng.normal(size=(models, points))  # noqa: E731
    oracles_a, oracles_b, same, shifted = draw(), draw(), draw(), draw(2.0)
    floor = klom_floor(oracles_a, oracles_b)  # > 0: 40 draws spread over 20 bins leave gaps
    assert abs(klom(same, oracles_a) - floor) < 0.1 * floor
    assert klom(shifted, oracles_a) > 2.5 * floor  # two standard deviations away
    assert klom_floor(oracles_a, oracles_a) == 0.0
    oracles = {"forget": oracles_a, "retain": oracles_a}
    by_split = klom_by_split({"forget": shifted, "retain": same}, oracles)
    assert by_split == {"forget": klom(shifted, oracles_a), "retain": klom(same, oracles_a)}


def test_a_few_outlying_models_stretch_the_bins_and_pull_klom_below_the_floor():
    # A known weakness of binning over the joint range, pinned so that it is not forgotten: one
    # judged model far off (e.g. a seed whose unlearning collapsed) widens every bin twentyfold,
    # the other models and the oracles share one or two bins, and KL(p || q) drops far below
    # the floor of two groups of oracles.
    rng = np.random.default_rng(0)
    oracles, judged = rng.normal(5, 1, (20, 400)), rng.normal(5, 1, (20, 400))
    floor = klom(rng.normal(5, 1, (20, 400)), oracles)
    judged[0] = -60.0
    assert klom(judged, oracles) < floor / 3


def test_margins_of_lists_each_models_margins():
    models = [build_model(lambda: MLP(6, (8,), 3), seed, dtype=torch.float64) for seed in (0, 1)]
    generator = torch.Generator().manual_seed(0)
    from tda.data import Examples

    inputs = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    examples = Examples(inputs, torch.tensor([0, 1, 2, 0, 1]))
    margins = margins_of(models, examples)
    assert margins.shape == (2, 5) and margins.dtype == np.float64
    for row, model in zip(margins, models, strict=True):
        expected = ClassificationTask().output(model(examples.inputs), examples.targets)
        np.testing.assert_allclose(row, expected.detach().numpy(), rtol=0, atol=1e-12)


def test_margins_of_refuses_inputs_of_another_dtype_than_the_model_by_name():
    """The inputs were cast to the model's dtype: float64 data was scored on a float32 model at
    float32 precision without a word, while the Unlearner refuses the same data."""
    from tda.data import Examples

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    examples = Examples(inputs, torch.tensor([0, 1, 2, 0, 1]))
    float32_model = build_model(lambda: MLP(6, (8,), 3), 0)
    with pytest.raises(
        ValueError, match=r"parameters are torch\.float32 .* inputs are torch\.float64"
    ):
        margins_of([float32_model], examples)
    float64_model = build_model(lambda: MLP(6, (8,), 3), 0, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"parameters are torch\.float64 .* inputs are torch\.float32"
    ):
        margins_of([float64_model], examples.to(dtype=torch.float32))
    # a group is refused whole, whichever model is the odd one out
    with pytest.raises(ValueError, match=r"parameters are torch\.float32"):
        margins_of([float64_model, float32_model], examples)


def test_margins_of_integer_inputs_pass_unchanged():
    """Token ids are not floating point: the dtype rule does not apply to them."""
    from tda.data import Examples

    def factory():
        return torch.nn.Sequential(
            torch.nn.Embedding(7, 4), torch.nn.Flatten(), torch.nn.Linear(12, 3)
        )

    model = build_model(factory, 0, dtype=torch.float64)
    tokens = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 2, 2]])
    examples = Examples(tokens, torch.tensor([0, 1, 2, 0]))
    margins = margins_of([model], examples)
    expected = ClassificationTask().output(model(tokens), examples.targets).detach().numpy()
    np.testing.assert_allclose(margins[0], expected, rtol=0, atol=1e-12)


def test_bad_shapes_and_settings_are_refused():
    good = np.zeros((3, 4))
    cases = {
        "must have shape": (np.zeros(4), good),
        "same points": (good, np.zeros((3, 5))),
        "contain NaN": (good, np.full((3, 4), np.nan)),
    }
    for message, (unlearned, oracle) in cases.items():
        with pytest.raises(ValueError, match=message):
            klom_per_point(unlearned, oracle)
    with pytest.raises(ValueError, match="must have shape"):
        klom_per_point(np.zeros((0, 4)), good)
    for settings in ({"bins": 0}, {"clip": 0.0}, {"epsilon": 0.0}, {"epsilon": 0.1}):
        with pytest.raises(ValueError, match="epsilon < 1/bins"):
            klom_per_point(good, good, **settings)
    with pytest.raises(ValueError, match="splits differ"):
        klom_by_split({"forget": good}, {"retain": good})
    with pytest.raises(ValueError, match="at least one model"):
        margins_of([], None)


def test_the_untouched_originals_sit_far_above_the_oracle_floor_on_the_forget_set(mnist):
    factory, config = partial(MLP, 40, (32,), 10), TrainConfig(epochs=40, batch_size=64)
    forget = np.arange(0, 300, 10)  # 30 of the 300 training examples
    retain = mnist.train.subset(np.setdiff1d(np.arange(300), forget))

    def group(data, seeds):
        return [train(build_model(factory, s), data, config, seed=s).model for s in seeds]

    originals = margins_of(group(mnist.train, range(12)), mnist.train.subset(forget))
    oracles_a = margins_of(group(retain, range(100, 112)), mnist.train.subset(forget))
    oracles_b = margins_of(group(retain, range(200, 212)), mnist.train.subset(forget))
    # With 12 models a group, 20 bins leave most bins empty and the P95 saturates towards
    # log(1 / epsilon) for everyone; the median point still separates the groups clearly.
    assert klom(originals, oracles_a) > klom_floor(oracles_b, oracles_a)
    median = klom(originals, oracles_a, percentile=50)
    assert median > 1.5 * klom_floor(oracles_b, oracles_a, percentile=50)


def test_klom_interval_matches_a_loop_over_bootstrap_draws():
    values = np.random.default_rng(1).gamma(2.0, size=50)
    low, high = klom_interval(values, resamples=200, seed=3)
    draws = np.random.default_rng(3).integers(0, 50, (200, 50))
    estimates = [np.percentile(values[draw], 95) for draw in draws]
    np.testing.assert_allclose([low, high], np.percentile(estimates, [2.5, 97.5]), rtol=1e-12)
    assert low <= np.percentile(values, 95) <= high


def test_klom_interval_narrows_with_more_points_and_is_a_point_for_equal_values():
    rng = np.random.default_rng(0)
    few = klom_interval(rng.gamma(2.0, size=40))
    many = klom_interval(rng.gamma(2.0, size=4000))
    assert many[1] - many[0] < (few[1] - few[0]) / 3
    assert klom_interval(np.full(10, 2.5)) == (2.5, 2.5)
    with pytest.raises(ValueError, match="at least one non-NaN"):
        klom_interval(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="level"):
        klom_interval(np.ones(3), level=1.0)
