r"""Forget-set types for benchmarks: a random fraction of the training set, one whole class, or
given positions (:class:`RandomForgetSet`, :class:`ClassForgetSet`, :class:`IndexForgetSet`).

Each type is a small frozen dataclass with three calls:

- ``indices(train)``: the forget set :math:`F` as sorted training-set positions ``[|F|]``;
- ``proxy(train)``: a *different* forget set of the same kind inside :math:`R = S \setminus F`
  (another random sample of the same size, or another class), on which hyperparameters may be
  tuned without looking at anything measured on :math:`F` (see :mod:`unlearn.tuning`);
  ``proxies(train, count)`` gives ``count`` of them, the first being ``proxy(train)``;
- ``evaluation_test(test)``: the test examples TA and MIA are measured on; class-wise forgetting
  measures them on the other classes, as in SalUn's protocol.

:func:`forget_request` turns indices into an :class:`~unlearn.UnlearningRequest`. Every call takes
its data as ``Examples`` or anything :func:`tda.as_examples` reads (e.g. ``(X, y)`` arrays), as
:meth:`unlearn.Unlearner.unlearn` does, so that a request's fingerprint matches the data the
unlearner reads; an ``(X, y)`` pair must not be read as a data set of two examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from torch import nn

from tda.data.examples import Examples, as_examples
from tda.fingerprint import model_fingerprint
from tda.indices import integer_positions
from unlearn.request import UnlearningRequest


class ForgetSet(Protocol):
    """A rule that picks the examples to forget from a training set."""

    def indices(self, train: Any) -> np.ndarray:
        """Sorted positions ``[|F|]`` of the forget set in ``train``."""
        ...

    def proxy(self, train: Any) -> ForgetSet:
        """A disjoint forget set of the same kind, inside the retain set."""
        ...

    def proxies(self, train: Any, count: int) -> list[ForgetSet]:
        """``count`` such forget sets (different from each other), ``proxy(train)`` first."""
        ...

    def evaluation_test(self, test: Any) -> Examples:
        """The test examples that TA and MIA-efficacy are measured on."""
        ...


def _size(train: Any) -> int:
    """Number of examples in ``train`` (``len`` of an ``(X, y)`` pair would be 2)."""
    return len(as_examples(train))


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"need at least one proxy forget set, got {count}")


def _sample(pool: np.ndarray, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))


def _distinct_draws(pool: np.ndarray, size: int, first_seed: int, count: int) -> list[ForgetSet]:
    """``count`` different draws of ``size`` from ``pool``, with seeds ``first_seed, ...``; a draw
    that repeats an earlier one is skipped for the next seed (a repeated proxy would count twice
    in the average of the proxy scores)."""
    if count > math.comb(len(pool), size):
        raise ValueError(
            f"{count} different proxy forget sets of {size} do not exist among {len(pool)} "
            "retained examples"
        )
    drawn: dict[tuple[int, ...], None] = {}
    seed = first_seed
    while len(drawn) < count:
        drawn.setdefault(tuple(_sample(pool, size, seed).tolist()))
        seed += 1
    return [IndexForgetSet(positions) for positions in drawn]


@dataclass(frozen=True)
class IndexForgetSet:
    """Forget sets given by their positions (e.g. a user's list, or a random set's proxy).

    Attributes:
        positions: training-set positions to forget.
    """

    positions: tuple[int, ...]

    def __post_init__(self) -> None:
        positions = integer_positions(self.positions, "forget positions")
        if positions.ndim > 1:  # flattening would forget the rows' positions as one list
            raise ValueError(
                f"forget positions must be one-dimensional, got shape {positions.shape}"
            )
        positions = positions.reshape(-1)
        if len(positions) == 0 or len(np.unique(positions)) != len(positions):
            raise ValueError("an index forget set needs distinct positions, at least one")
        object.__setattr__(self, "positions", tuple(sorted(int(i) for i in positions)))

    def indices(self, train: Any) -> np.ndarray:
        chosen, size = np.asarray(self.positions, dtype=np.int64), _size(train)
        if chosen[0] < 0 or chosen[-1] >= size:
            raise ValueError(f"forget positions must lie in [0, {size})")
        return chosen

    def proxy(self, train: Any) -> ForgetSet:
        """As many other positions, drawn at random (seed 1) from the rest."""
        return self.proxies(train, 1)[0]

    def proxies(self, train: Any, count: int) -> list[ForgetSet]:
        """Different draws from the rest, with seeds ``1 .. count`` (a repeat takes the next)."""
        _check_count(count)
        rest = np.setdiff1d(np.arange(_size(train)), self.indices(train))
        if len(self.positions) > len(rest) - 1:
            raise ValueError(f"the retain set of {len(rest)} is too small for a proxy")
        return _distinct_draws(rest, len(self.positions), 1, count)

    def evaluation_test(self, test: Any) -> Examples:
        return as_examples(test)


@dataclass(frozen=True)
class RandomForgetSet:
    r"""A uniformly random :math:`\mathrm{round}(\text{fraction} \cdot n)` examples (at least 1).

    Attributes:
        fraction: share of the training set to forget, in ``(0, 1)``.
        seed: seed of the draw (the proxy uses ``seed + 1`` on the retain set).
    """

    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction}")

    def _count(self, train: Any) -> int:
        size = _size(train)
        count = max(1, round(self.fraction * size))
        if count >= size:
            raise ValueError(f"forgetting {count} of {size} examples leaves none to retain")
        return count

    def indices(self, train: Any) -> np.ndarray:
        return _sample(np.arange(_size(train)), self._count(train), self.seed)

    def proxy(self, train: Any) -> ForgetSet:
        """As many examples again, drawn with ``seed + 1`` from the retain set."""
        return self.proxies(train, 1)[0]

    def proxies(self, train: Any, count: int) -> list[ForgetSet]:
        """Different draws from the retain set, with seeds ``seed + 1 .. seed + count`` (a
        repeat takes the next seed)."""
        _check_count(count)
        retain = np.setdiff1d(np.arange(_size(train)), self.indices(train))
        size = self._count(train)
        if size > len(retain) - 1:
            raise ValueError(f"the retain set of {len(retain)} is too small for a proxy of {size}")
        return _distinct_draws(retain, size, self.seed + 1, count)

    def evaluation_test(self, test: Any) -> Examples:
        return as_examples(test)


def _class_targets(train: Any) -> np.ndarray:
    """The class of every example, ``[n]``; sequence targets (``[n, T]``) name no class (their
    flattened token positions read as example positions)."""
    targets = as_examples(train).targets.cpu().numpy()
    if targets.ndim != 1:
        raise ValueError(
            "class-wise forget sets need one class target per example, shape [n]; got targets "
            f"of shape {targets.shape}"
        )
    return targets


@dataclass(frozen=True)
class ClassForgetSet:
    """Every training example of one class (class-wise forgetting).

    Attributes:
        label: the class to forget.
    """

    label: int

    def indices(self, train: Any) -> np.ndarray:
        chosen = np.flatnonzero(_class_targets(train) == self.label)
        if len(chosen) == 0:
            raise ValueError(f"the training set has no example of class {self.label}")
        if len(chosen) == _size(train):
            raise ValueError(f"every training example is of class {self.label}")
        return chosen

    def proxy(self, train: Any) -> ForgetSet:
        """The next class present in the training set (cyclically)."""
        return self.proxies(train, 1)[0]

    def proxies(self, train: Any, count: int) -> list[ForgetSet]:
        """The next ``count`` classes present in the training set (cyclically)."""
        _check_count(count)
        present = np.unique(_class_targets(train))
        others = present[present != self.label]
        if len(others) < 2:
            raise ValueError("a class-wise proxy needs at least three classes in the training set")
        if count > len(others):
            raise ValueError(f"{count} proxy classes asked for; there are {len(others)} others")
        ordered = np.concatenate([others[others > self.label], others[others < self.label]])
        return [ClassForgetSet(int(label)) for label in ordered[:count]]

    def evaluation_test(self, test: Any) -> Examples:
        test = as_examples(test)
        return test.subset(test.targets.cpu().numpy() != self.label)


def forget_request(
    indices: np.ndarray,
    train: Any,
    *,
    seed: int = 0,
    model: nn.Module | None = None,
) -> UnlearningRequest:
    """A request to forget ``indices`` from ``train`` (``Examples`` or anything
    :func:`tda.as_examples` reads), bound to ``model``'s fingerprint if given."""
    train = as_examples(train)
    return UnlearningRequest(
        forget_indices=indices,
        train_size=len(train),
        seed=seed,
        model_fingerprint=model_fingerprint(model) if model is not None else None,
        data_fingerprint=train.fingerprint(),
    )
