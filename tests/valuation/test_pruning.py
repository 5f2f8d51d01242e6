"""Pruning curves: removal sets, pairing, intervals and resuming from a workspace."""

import json
from functools import partial

import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

from tda.data import Examples
from tda.models import MLP, LogisticRegression, build_model
from tda.outputs import accuracy
from tda.task import IGNORE_INDEX
from tda.training import TrainConfig, train
from tda.valuation import PruningCurve, pruning_curve, removal_order, removed_count

CONFIG = TrainConfig(epochs=3, batch_size=16)


def factory():
    return LogisticRegression(2, 2)


@pytest.fixture
def problem():
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(60) % 2
    inputs = (targets[:, None] * 2.0 - 1.0) * 2.0 + torch.randn(60, 2, generator=generator)
    data = Examples(inputs, targets)
    return data.subset(range(40)), data.subset(range(40, 60))


def test_removal_orders():
    values = torch.tensor([0.3, -1.0, 0.3, 2.0, -1.0])
    assert removal_order(values, "value", seed=0).tolist() == [1, 4, 0, 2, 3]  # stable ties
    first, second = removal_order(values, "random", 0), removal_order(values, "random", 0)
    assert sorted(first.tolist()) == list(range(5)) and np.array_equal(first, second)
    with pytest.raises(ValueError, match="strategy"):
        removal_order(values, "largest", 0)
    assert removed_count(0.29, 100) == 29 and removed_count(0.5, 5) == 2


def test_curve_shapes_and_shared_full_data(problem):
    train_data, test_data = problem
    values = torch.linspace(-1, 1, 40)
    curve = pruning_curve(
        factory, train_data, test_data, values, fractions=(0.25, 0.5), seeds=(0, 1), config=CONFIG
    )
    assert curve.fractions == (0.0, 0.25, 0.5) and curve.seeds == (0, 1)
    for strategy in ("value", "random"):
        assert curve.accuracy[strategy].shape == (3, 2)
        assert ((curve.accuracy[strategy] >= 0) & (curve.accuracy[strategy] <= 1)).all()
    np.testing.assert_array_equal(curve.accuracy["value"][0], curve.accuracy["random"][0])
    again = pruning_curve(
        factory, train_data, test_data, values, fractions=(0.25, 0.5), seeds=(0, 1), config=CONFIG
    )
    np.testing.assert_array_equal(again.accuracy["value"], curve.accuracy["value"])


def test_resume_reads_records_and_refuses_other_values(problem, tmp_path, monkeypatch):
    train_data, test_data = problem
    values = torch.linspace(-1, 1, 40)
    options = {"fractions": (0.5,), "seeds": (3,), "config": CONFIG, "workspace": tmp_path}
    first = pruning_curve(factory, train_data, test_data, values, **options)
    assert len(list(tmp_path.glob("*.json"))) == 3  # full, value and random at 0.5

    def never(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr("tda.valuation.pruning.train", never)
    resumed = pruning_curve(factory, train_data, test_data, values, **options)
    np.testing.assert_array_equal(resumed.accuracy["random"], first.accuracy["random"])
    with pytest.raises(ValueError, match="another removal set"):
        pruning_curve(factory, train_data, test_data, -values, **options)
    longer = {**options, "config": TrainConfig(epochs=4, batch_size=16)}
    with pytest.raises(ValueError, match=r"other training settings \(differing: train_settings\)"):
        pruning_curve(factory, train_data, test_data, values, **longer)
    # another architecture read the first one's accuracies
    wider = partial(MLP, 2, (8,), 2)
    with pytest.raises(ValueError, match="another model"):
        pruning_curve(wider, train_data, test_data, values, **options)


def test_fractions_equal_to_three_decimals_get_records_of_their_own(problem, tmp_path):
    # 0.2496 and 0.2504 of 40 remove 9 and 10 examples: both were named "0.250", the second refused
    train_data, test_data = problem
    values = torch.linspace(-1, 1, 40)
    options = {"fractions": (0.2496, 0.2504), "seeds": (0,), "config": CONFIG}
    curve = pruning_curve(factory, train_data, test_data, values, **options, workspace=tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "full-0-seed0.json",
        "random-10-seed0.json",
        "random-9-seed0.json",
        "value-10-seed0.json",
        "value-9-seed0.json",
    ]
    fresh = pruning_curve(factory, train_data, test_data, values, **options)
    for strategy in ("value", "random"):
        np.testing.assert_array_equal(curve.accuracy[strategy], fresh.accuracy[strategy])


def test_records_named_by_fraction_before_are_read_when_they_record_the_same_run(
    problem, tmp_path, monkeypatch
):
    train_data, test_data = problem
    values = torch.linspace(-1, 1, 40)
    options = {"seeds": (0,), "config": CONFIG, "workspace": tmp_path}
    first = pruning_curve(factory, train_data, test_data, values, fractions=(0.25,), **options)
    for name, old in [
        ("full-0", "full-0.000"),
        ("value-10", "value-0.250"),
        ("random-10", "random-0.250"),
    ]:
        (tmp_path / f"{name}-seed0.json").rename(tmp_path / f"{old}-seed0.json")

    def never(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    with monkeypatch.context() as patched:
        patched.setattr("tda.valuation.pruning.train", never)
        # 0.2504 removes the same 10 examples as the 0.25 recorded under its old name
        again = pruning_curve(
            factory, train_data, test_data, values, fractions=(0.2504,), **options
        )
    for strategy in ("value", "random"):
        np.testing.assert_array_equal(again.accuracy[strategy], first.accuracy[strategy])
    # 0.2496 removes 9: the old "0.250" records hold another run, which is trained, not refused
    pruning_curve(factory, train_data, test_data, values, fractions=(0.2496,), **options)
    assert (tmp_path / "value-9-seed0.json").is_file()


def test_numpy_seeds_and_fractions_are_read_as_python_numbers(problem, tmp_path):
    # np.arange seeds: "truth value of an array is ambiguous"; a list of them failed after the
    # first training, on writing its record (int64 is not JSON serialisable)
    train_data, test_data = problem
    values = torch.linspace(-1, 1, 40)
    expected = pruning_curve(
        factory, train_data, test_data, values, fractions=(0.5,), seeds=(0, 1), config=CONFIG
    )
    for seeds in (np.arange(2), list(np.arange(2))):
        curve = pruning_curve(
            factory,
            train_data,
            test_data,
            values,
            fractions=np.array([0.5]),
            seeds=seeds,
            config=CONFIG,
            workspace=tmp_path / type(seeds).__name__,
        )
        assert curve.seeds == (0, 1) and {type(seed) for seed in curve.seeds} == {int}
        assert curve.fractions == (0.0, 0.5) and {type(f) for f in curve.fractions} == {float}
        for strategy in ("value", "random"):
            np.testing.assert_array_equal(curve.accuracy[strategy], expected.accuracy[strategy])
    with pytest.raises(TypeError, match=r"seeds must be integers, got \[0, 1.5\]"):
        pruning_curve(factory, train_data, test_data, values, seeds=[0, 1.5])


class TokenClassifier(torch.nn.Module):
    """Mean of token embeddings, then a linear layer: a model whose inputs are integer ids."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, tokens):
        return self.linear(self.embedding(tokens).mean(1))


def test_curve_runs_on_token_id_inputs_like_direct_training():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (30, 5), generator=generator)
    data = Examples(tokens, (tokens[:, 0] >= 5).long())
    train_data, test_data = data.subset(range(20)), data.subset(range(20, 30))
    values = torch.linspace(-1, 1, 20)
    curve = pruning_curve(
        TokenClassifier, train_data, test_data, values, fractions=(0.25,), seeds=(0,), config=CONFIG
    )
    model = build_model(TokenClassifier, 0)  # float32: token ids are no model dtype
    train(model, train_data.subset(range(5, 20)), CONFIG, seed=0)
    assert curve.accuracy["value"][1, 0] == accuracy(model, test_data)


def test_interval_is_student_t():
    accuracy = np.array([[0.8, 0.9, 0.85]])
    curve = PruningCurve((0.0,), (0, 1, 2), {"value": accuracy, "random": accuracy})
    low, high = curve.interval("value")
    half = student_t.ppf(0.975, 2) * np.std(accuracy, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose([low[0], high[0]], [0.85 - half, 0.85 + half])
    assert curve.as_dict()["curves"]["value"]["mean"] == pytest.approx([0.85])


def test_the_interval_is_clipped_to_zero_one():
    # two seeds: the Student-t interval of 0.92 and 0.9378 reached 1.0418, of 0.02 and 0.05 -0.16
    accuracy = np.array([[0.92, 0.9377777777777778], [0.02, 0.05], [0.5, 0.51]])
    curve = PruningCurve((0.0, 0.1, 0.2), (0, 1), {"value": accuracy, "random": accuracy})
    low, high = curve.interval("value")
    half = student_t.ppf(0.975, 1) * np.std(accuracy, axis=1, ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(low, [0.92888888888 - half[0], 0.0, 0.505 - half[2]])
    np.testing.assert_allclose(high, [1.0, 0.035 + half[1], 0.505 + half[2]])
    assert curve.as_dict()["curves"]["value"]["ci_high"][0] == 1.0


def test_accuracy_is_a_count_ratio_not_a_float32_mean(problem, tmp_path, monkeypatch):
    train_data, test_data = problem
    # 3 test examples: 2/3 was 0.6666666865348816, the float32 mean
    test_data = Examples(test_data.inputs[:3], torch.tensor([0, 1, 0]))
    options = {"fractions": (0.5,), "seeds": (0, 1), "config": CONFIG, "workspace": tmp_path}
    curve = pruning_curve(factory, train_data, test_data, torch.linspace(-1, 1, 40), **options)
    table = np.concatenate([curve.accuracy["value"], curve.accuracy["random"]])
    assert table.dtype == np.float64 and 2 / 3 in table
    np.testing.assert_array_equal(table, np.round(table * 3) / 3)
    record = tmp_path / "full-0-seed0.json"
    assert json.loads(record.read_text())["accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)

    # a record written before: its float32 mean is read as the count ratio it measured
    old = json.loads(record.read_text())
    old["accuracy"] = float(np.float32(old["accuracy"])) + 1e-8
    record.write_text(json.dumps(old))
    monkeypatch.setattr("tda.valuation.pruning.train", None)  # every run is recorded
    resumed = pruning_curve(factory, train_data, test_data, torch.linspace(-1, 1, 40), **options)
    np.testing.assert_array_equal(resumed.accuracy["value"], curve.accuracy["value"])


def test_bad_arguments_are_refused(problem):
    train_data, test_data = problem
    with pytest.raises(ValueError, match="one per training example"):
        pruning_curve(factory, train_data, test_data, torch.zeros(3))
    with pytest.raises(ValueError, match="fractions"):
        pruning_curve(factory, train_data, test_data, torch.zeros(40), fractions=(1.0,))
    for seeds in [(), (0, 0)]:  # a repeated seed would narrow the interval with a copy
        with pytest.raises(ValueError, match="seeds must be a non-empty list without repeats"):
            pruning_curve(factory, train_data, test_data, torch.zeros(40), seeds=seeds)
    values = torch.zeros(40)
    values[3] = float("nan")
    with pytest.raises(ValueError, match=r"values hold NaN .* \(first at index 3: nan\)"):
        pruning_curve(factory, train_data, test_data, values)


def test_a_test_set_without_counted_targets_is_refused_before_any_training(problem):
    train_data, test_data = problem
    ignored = Examples(test_data.inputs, torch.full((len(test_data),), IGNORE_INDEX))

    def never():
        raise AssertionError("trained before the test targets were checked")

    with pytest.raises(ValueError, match="at least one test example with a counted target"):
        pruning_curve(never, train_data, ignored, torch.zeros(40))


@pytest.mark.parametrize("confidence", [95, 0.0, 1.0, float("nan")])
def test_a_confidence_outside_zero_one_is_refused_before_any_training(problem, confidence):
    train_data, test_data = problem  # a level outside (0, 1) made the Student-t intervals NaN

    def never():
        raise AssertionError("trained before the confidence level was checked")

    with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1"):
        pruning_curve(never, train_data, test_data, torch.zeros(40), confidence=confidence)
    with pytest.raises(ValueError, match="confidence must lie strictly between 0 and 1"):
        PruningCurve((0.0,), (0,), {"value": np.ones((1, 1))}, confidence=confidence)


def test_a_curve_prints_as_one_line_per_strategy():
    accuracy = {"value": np.array([[0.9, 0.91], [0.92, 0.93]]), "random": np.full((2, 2), 0.9)}
    lines = str(PruningCurve((0.0, 0.1), (0, 1), accuracy)).splitlines()
    assert lines == [
        "value removal, test accuracy [0%: 90.5%, 10%: 92.5%]",
        "random removal, test accuracy [0%: 90.0%, 10%: 90.0%]",
    ]
