"""Count-like settings: positive integers, never floats or booleans."""

import re

import numpy as np
import pytest

from tda.arguments import check_positive_int


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
