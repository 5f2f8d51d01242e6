"""Count-like settings: positive integers, never floats or booleans; seed lists: distinct
non-negative integers, apart from the members' where they are retraining seeds; fractions and
confidence levels: strictly between 0 and 1."""

import re

import numpy as np
import pytest

from tda.arguments import (
    check_open_unit,
    check_positive_int,
    check_retraining_seeds,
    check_seeds,
)


def test_one_is_the_smallest_value_accepted():
    for value in (1, 4096, np.int64(7), np.int32(1)):
        check_positive_int("chunk_size", value)  # accepted: no error
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1, got 0"):
        check_positive_int("chunk_size", 0)


@pytest.mark.parametrize(
    "value", [0, -3, 2.5, 2.0, True, "4", None, np.int64(0), np.float64(2.0), np.bool_(True)]
)
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(
        ValueError, match=re.escape(f"epochs must be an integer >= 1, got {value!r}")
    ):
        check_positive_int("epochs", value)


def test_seeds_come_back_as_python_ints():
    assert check_seeds("seeds", (0, np.int64(3), 1000)) == [0, 3, 1000]
    assert all(type(seed) is int for seed in check_seeds("seeds", [np.int32(2)]))


@pytest.mark.parametrize(
    "value", ["abc", "01", b"1", 3, None, [], (), [0.5], [1.0], [-1], [0, 0], [True], ["0"], {0: 1}]
)
def test_anything_but_distinct_non_negative_integers_is_refused_as_seeds(value):
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"ground_truth.seeds must be a non-empty list of distinct integers >= 0, got {value!r}"
        ),
    ):
        check_seeds("ground_truth.seeds", value)


def test_retraining_seeds_of_the_members_are_refused_by_name():
    check_retraining_seeds("gt", [1000, 1001], [0, 1], ground_truth="the truth", members="m")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the truth retrains with seeds [1, 0], which the members of x were trained with: "
            "retrain it with seeds apart from the members' (gt, e.g. [1000, 1001, 1002])"
        ),
    ):
        check_retraining_seeds("gt", [1, 5, 0], [0, 1], ground_truth="the truth", members="of x")


@pytest.mark.parametrize("value", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_a_value_outside_the_open_unit_interval_is_refused_by_name(value):
    check_open_unit("confidence", 0.5)  # the same check passes a value inside
    with pytest.raises(ValueError, match=r"confidence must lie strictly between 0 and 1, got"):
        check_open_unit("confidence", value)
