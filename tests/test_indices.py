"""Integer positions: booleans and floats are refused, not read as positions."""

import numpy as np
import pytest
import torch

from tda.indices import NotIntegerPositionsError, integer_positions


@pytest.mark.parametrize(
    "values", [[2, 0, 1], np.array([2, 0, 1], dtype=np.uint8), torch.tensor([2, 0, 1])]
)
def test_integers_of_any_kind_become_int64_positions(values):
    positions = integer_positions(values, "query indices")
    assert positions.dtype == np.int64 and positions.tolist() == [2, 0, 1]


def test_an_empty_selection_is_empty_and_the_shape_is_kept():
    assert integer_positions([], "forget indices").shape == (0,)
    assert integer_positions([[1, 2], [3, 4]], "rows").shape == (2, 2)


@pytest.mark.parametrize(
    ("values", "given"),
    [
        (np.array([True, False, True]), "a boolean mask"),  # would read as positions 1, 0, 1
        ([1.7, 2.0], "dtype float64"),  # would truncate to 1, 2
        (torch.tensor([0.5]), "dtype float32"),
    ],
)
def test_booleans_and_floats_are_refused_as_type_and_value_errors(values, given):
    with pytest.raises(
        NotIntegerPositionsError, match=f"forget indices must be integers, not {given}"
    ):
        integer_positions(values, "forget indices")
    assert issubclass(NotIntegerPositionsError, TypeError)
    assert issubclass(NotIntegerPositionsError, ValueError)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({3, 1}, "not a set \\(it has no order: pass sorted"),
        ([2**70], "not integers beyond the int64 range"),
        ([1, "2"], "not strings \\(such as '1'\\)"),
        ([1, 2.5, None], "not values of type float \\(such as 2.5\\)"),
        ([1, None], "not values of type NoneType"),
    ],
)
def test_sets_and_other_objects_are_named_as_what_they_are(values, message):
    """Each was refused as "dtype object", which named none of them."""
    with pytest.raises(NotIntegerPositionsError, match=f"forget indices .*{message}"):
        integer_positions(values, "forget indices")
