r"""``UnlearningRequest``: which training examples to forget, validated when it is made.

A request names examples by their position in the training set :math:`S` (``0 .. n-1``). The
forget set :math:`F` is this request's indices; the retain set is
:math:`R = S \setminus (F \cup F_{\text{earlier}})`, where :math:`F_{\text{earlier}}` are the
examples forgotten by earlier requests on the same model (sequential unlearning never retrains on
what an earlier request removed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from tda.indices import integer_positions

IndexLike = Sequence[int] | np.ndarray | torch.Tensor


def _as_index_tuple(indices: IndexLike, what: str) -> tuple[int, ...]:
    array = integer_positions(indices, f"{what} indices")
    if array.size == 0:
        return ()
    if array.ndim != 1:
        raise ValueError(f"{what} indices must be one-dimensional, got shape {array.shape}")
    return tuple(int(i) for i in array)


def _check_range(indices: tuple[int, ...], train_size: int, what: str) -> None:
    for index in indices:
        if not 0 <= index < train_size:
            raise ValueError(
                f"{what} index {index} is out of range for a training set of {train_size} examples"
            )


def _check_unique(indices: tuple[int, ...], what: str) -> None:
    values, counts = np.unique(np.asarray(indices, dtype=np.int64), return_counts=True)
    repeated = values[counts > 1]
    if len(repeated):
        first = int(repeated[0])
        raise ValueError(
            f"{what} index {first} appears {int(counts[values == first][0])} times; "
            f"{len(repeated)} indices are duplicated"
        )


def _digest(content: Mapping[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return "req-" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class UnlearningRequest:
    """A validated request to remove training examples from a model.

    Attributes:
        forget_indices: positions in the training set of the examples to forget (stored sorted).
            May be empty: the :class:`~unlearn.Unlearner` then returns the model unchanged for
            methods that allow it and raises for methods that need forget data.
        train_size: :math:`n = |S|`, the size of the training set the indices refer to.
        seed: seed of every random choice the unlearner makes (shuffling, random labels, MIA).
        model_fingerprint: :func:`tda.fingerprint.model_fingerprint` of the model this request
            targets; the unlearner refuses any other model. ``None`` skips the check.
        data_fingerprint: ``Examples.fingerprint()`` of the training set; ``None`` skips the check.
        previously_forgotten: examples removed by earlier requests on the same model (sorted);
            they are excluded from the retain set and may not be requested again.
        request_id: identifier for the audit log; derived from the content when not given.

    Raises:
        ValueError: indices that are not integers, out of range, duplicated, already forgotten,
            or that would leave no example to retain; a non-positive ``train_size``; a seed
            outside ``[0, 2**64)``.
    """

    forget_indices: tuple[int, ...]
    train_size: int
    seed: int = 0
    model_fingerprint: str | None = None
    data_fingerprint: str | None = None
    previously_forgotten: tuple[int, ...] = ()
    request_id: str = field(default="")

    def __post_init__(self) -> None:
        if isinstance(self.train_size, bool) or not isinstance(self.train_size, int | np.integer):
            raise ValueError(f"train_size must be an integer, got {self.train_size!r}")
        if self.train_size < 1:
            raise ValueError(f"train_size must be positive, got {self.train_size}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.seed < 2**64:  # the range both torch and numpy seed from
            raise ValueError(f"seed must be in [0, 2**64), got {self.seed}")
        forget = _as_index_tuple(self.forget_indices, "forget")
        earlier = _as_index_tuple(self.previously_forgotten, "previously forgotten")
        for indices, what in ((forget, "forget"), (earlier, "previously forgotten")):
            _check_range(indices, int(self.train_size), what)
            _check_unique(indices, what)
        self._check_disjoint_and_not_everything(forget, earlier)
        for name in ("model_fingerprint", "data_fingerprint"):
            _check_fingerprint(name, getattr(self, name))
        object.__setattr__(self, "forget_indices", tuple(sorted(forget)))
        object.__setattr__(self, "previously_forgotten", tuple(sorted(earlier)))
        object.__setattr__(self, "train_size", int(self.train_size))
        object.__setattr__(self, "seed", int(self.seed))
        if not self.request_id:
            object.__setattr__(self, "request_id", _digest(self._content()))

    def _check_disjoint_and_not_everything(self, forget, earlier) -> None:
        overlap = sorted(set(forget) & set(earlier))
        if overlap:
            raise ValueError(
                f"forget index {overlap[0]} was already forgotten by an earlier request "
                f"({len(overlap)} indices overlap)"
            )
        if len(forget) + len(earlier) >= self.train_size:
            raise ValueError(
                f"the forget set covers all {self.train_size} training examples; "
                "nothing would remain to retain (retrain from scratch on new data instead)"
            )

    def _content(self) -> dict[str, Any]:
        content = self.to_dict()
        content["request_id"] = None  # the derived id hashes everything else
        return content

    @property
    def is_empty(self) -> bool:
        """Whether the forget set is empty."""
        return not self.forget_indices

    def retain_indices(self) -> np.ndarray:
        r"""Ascending positions ``[|R|]`` of :math:`R = S \setminus (F \cup F_{\text{earlier}})`."""
        keep = np.ones(self.train_size, dtype=bool)
        keep[list(self.forget_indices)] = False
        keep[list(self.previously_forgotten)] = False
        return np.flatnonzero(keep)

    def forgotten_after(self) -> tuple[int, ...]:
        """Everything forgotten once this request is done (earlier requests' and this one's)."""
        return tuple(sorted(self.previously_forgotten + self.forget_indices))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary; :meth:`from_dict` restores an equal request."""
        return {f.name: _json_value(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> UnlearningRequest:
        """The request described by :meth:`to_dict` output (validated again)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(content) - names)
        if unknown:
            raise ValueError(f"unknown request fields {unknown}")
        return cls(**content)


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_fingerprint(name: str, value: str | None) -> None:
    """A fingerprint is ``None`` (unchecked) or 64 hexadecimal digits (SHA-256): anything else
    could never match, and every run would be refused only later, as another model or data."""
    if value is None:
        return
    if not isinstance(value, str) or len(value) != 64 or set(value) - set("0123456789abcdef"):
        raise ValueError(
            f"{name} must be None or a SHA-256 hex digest (64 characters, "
            f"tda.fingerprint.model_fingerprint / Examples.fingerprint), got {value!r}"
        )
