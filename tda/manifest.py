"""Comparing a store's recorded settings with a caller's: which fields differ."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def manifest_differences(
    stored: Mapping[str, Any],
    given: Mapping[str, Any],
    checked: Sequence[str],
    recorded_since: Sequence[str] = (),
) -> list[str]:
    """``"name: stored X, given Y"`` for every field of ``checked`` that differs, and of
    ``recorded_since`` where both sides hold it (a store made before the field was recorded, or
    a caller that does not know it, is not checked on it)."""
    known = [name for name in recorded_since if name in stored and name in given]
    return [
        f"{name}: stored {stored.get(name)!r}, given {given[name]!r}"
        for name in (*checked, *known)
        if stored.get(name) != given[name]
    ]
