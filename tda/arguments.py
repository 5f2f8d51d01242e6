"""The checks settings share: counts and sizes (positive integers, not floats or booleans) and
seeds (distinct non-negative integers).

``epochs=2.5`` would fail deep inside a loop and ``True`` would pass as 1, so sizes, counts and
chunk sizes are checked here when they are given; ``seeds="abc"`` would be read one character at
a time and ``seeds=[-1]`` would train a member into ``seed--1/``, so seed lists are checked here
before anything is trained.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence


def check_positive_int(name: str, value: object) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer (a Python or numpy
    one, not a ``bool``) >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_open_unit(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``0 < value < 1`` (a fraction or a confidence
    level; NaN fails)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}")


def check_seeds(name: str, value: object) -> list[int]:
    """``value`` as a list of Python ints, or ``ValueError`` naming ``name`` unless it is a
    non-empty sequence (not a string) of distinct integers >= 0 (Python or numpy ones, not
    ``bool``)."""
    valid = isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and value
    if valid:
        valid = all(
            isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0
            for seed in value
        )
    if not valid or len(set(value)) != len(value):
        raise ValueError(
            f"{name} must be a non-empty list of distinct integers >= 0, got {value!r}"
        )
    return [int(seed) for seed in value]


def check_retraining_seeds(
    name: str, seeds: Iterable[int], member_seeds: Iterable[int], *, ground_truth: str, members: str
) -> None:
    """Refuse retraining seeds ``seeds`` (the setting ``name``) that the members were trained
    with: a model retrained with a member's seed starts from that member's initial weights (and
    batch order), so it agrees with the member more than an independent retraining would, and
    the member's LDS can be inflated.

    Args:
        ground_truth: the retrained models, as the message names them (``"the ground truth in
            runs/x/ground_truth"``).
        members: the members, as the message names them after "which the members".

    Raises:
        ValueError: naming the shared seeds and the setting to change.
    """
    member_seeds = set(member_seeds)
    shared = [seed for seed in seeds if seed in member_seeds]
    if shared:
        raise ValueError(
            f"{ground_truth} retrains with seeds {shared}, which the members {members} were "
            f"trained with: retrain it with seeds apart from the members' ({name}, e.g. "
            "[1000, 1001, 1002])"
        )
