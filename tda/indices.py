"""Integer positions: the one check that indices are integers, not a boolean mask or floats.

numpy and torch read a boolean array as the positions 1 and 0 and truncate floats when casting
them, so every public function that takes positions of examples, queries or facts checks them
here first and names what it was given.
"""

from __future__ import annotations

import numpy as np
import torch


class NotIntegerPositionsError(TypeError, ValueError):
    """Positions given as booleans or floats: a ``TypeError``, and a ``ValueError`` for callers
    that catch bad argument values."""


def integer_positions(values, what: str) -> np.ndarray:
    """``values`` (a sequence, numpy array or tensor of integers) as an int64 numpy array of the
    same shape; an empty input gives an empty array.

    Raises:
        NotIntegerPositionsError: a boolean mask, or values that are not integers; the message
            starts with ``what``.
    """
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer)):
        given = "a boolean mask" if array.dtype == np.bool_ else f"dtype {array.dtype}"
        raise NotIntegerPositionsError(f"{what} must be integers, not {given}")
    return array.astype(np.int64)
