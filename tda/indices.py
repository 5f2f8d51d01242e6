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
    if isinstance(values, (set, frozenset, dict)):
        raise NotIntegerPositionsError(
            f"{what} must be a sequence, array or tensor of integers, not a "
            f"{type(values).__name__} (it has no order: pass sorted(...))"
        )
    array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer)):
        raise NotIntegerPositionsError(f"{what} must be integers, not {_described(array)}")
    return array.astype(np.int64)


def check_in_range(positions: np.ndarray, size: int, what: str, where: str) -> None:
    """Raise ``ValueError`` naming the first of ``positions`` outside ``[0, size)``: "``what``
    7 is out of range for ``where`` of ``size`` examples"."""
    bad = positions[(positions < 0) | (positions >= size)]
    if len(bad):
        raise ValueError(f"{what} {int(bad[0])} is out of range for {where} of {size} examples")


def _described(array: np.ndarray) -> str:
    """What a non-integer ``array`` holds, in words."""
    if array.dtype == np.bool_:
        return "a boolean mask"
    if array.dtype.kind in "US":
        return f"strings (such as {str(array.flat[0])!r})"
    if array.dtype != object:
        return f"dtype {array.dtype}"
    odd = [v for v in array.flat if not isinstance(v, (int, np.integer))]
    if not odd:
        return "integers beyond the int64 range"
    return f"values of type {type(odd[0]).__name__} (such as {odd[0]!r})"
