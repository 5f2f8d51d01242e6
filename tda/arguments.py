"""The check every count-like setting shares: a positive integer, not a float or a boolean.

``epochs=2.5`` would fail deep inside a loop and ``True`` would pass as 1, so sizes, counts and
chunk sizes are checked here when they are given.
"""

from __future__ import annotations

import numbers


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer (a Python or numpy
    one, not a ``bool``) >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
