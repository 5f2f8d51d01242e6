r"""Honest hyperparameter selection: tune on a proxy forget set, never on the real one.

Benchmarks of approximate unlearners are easy to flatter by picking, after the fact, the setting
whose metrics on :math:`F` land closest to the oracle's. The rule here looks at neither :math:`F`
nor any model trained without :math:`F`:

1. draw a proxy forget set :math:`F' \subset R` of the same kind as :math:`F` (another random
   sample of the same size, or another class; see :mod:`unlearn.forget_sets`);
2. for every grid value :math:`v`, run the method with :math:`v` on a few originals to forget
   :math:`F'` and average their UA / RA / TA / MIA (in percent);
3. score :math:`v` by the average gap of those means to the mean metrics of oracles retrained on
   :math:`S \setminus F'` (which still contains :math:`F`);
4. choose the value with the smallest score (the earliest in grid order on ties); a value whose
   unlearning diverges (NaN or infinite loss or weights) on the proxy is recorded as failed and
   never chosen.

The chosen value is then used, unchanged, on :math:`F`; should it diverge there (which the
unlearner sees from its own loss, without any oracle), the next value of :meth:`Selection.ranking`
is used instead (:func:`unlearn.benchmark.unlearn_each_stable`). Grid, scores, choice and any
fallback are recorded. :func:`tune_on_proxy` runs the whole rule; :func:`select_on_proxy` is
steps 2-4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from tda.data.examples import Examples
from tda.training import TrainConfig
from unlearn.benchmark import mean_metrics, metrics_of, unlearn_each
from unlearn.ensembles import load_or_train_oracles
from unlearn.forget_sets import ForgetSet, forget_request
from unlearn.methods.base import ForgetSplit, UnlearningMethod
from unlearn.metrics import average_gap

RULE = (
    "minimise the average UA/RA/TA/MIA gap to oracles retrained without a proxy forget set "
    "drawn from the retain set (same kind and size as F); ties -> earliest grid value"
)


@dataclass(frozen=True)
class Selection:
    """The outcome of a search.

    Attributes:
        parameter: what was searched (a label, e.g. ``"loop.optimizer.lr"``).
        grid: the values tried, in order.
        scores: proxy average gap of each value (lower is better); ``None`` where it diverged.
        metrics: mean proxy UA / RA / TA / MIA of each value; ``None`` where it diverged.
        oracle_metrics: mean proxy metrics of the proxy oracles.
        chosen: the selected value.
        rule: the selection rule, in words.
    """

    parameter: str
    grid: list[Any]
    scores: list[float | None]
    metrics: list[dict[str, float] | None]
    oracle_metrics: dict[str, float]
    chosen: Any
    rule: str = RULE

    def ranking(self) -> list[Any]:
        """The values that did not diverge, best first (ties in grid order)."""
        scored = [(score, i) for i, score in enumerate(self.scores) if score is not None]
        return [self.grid[i] for _, i in sorted(scored)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "parameter": self.parameter,
            "grid": self.grid,
            "scores": self.scores,
            "metrics": self.metrics,
            "oracle_metrics": self.oracle_metrics,
            "chosen": self.chosen,
            "rule": self.rule,
        }


def select_on_proxy(
    parameter: str,
    candidates: Mapping[Any, UnlearningMethod],
    originals: Sequence[nn.Module],
    train: Examples,
    proxy_indices: np.ndarray,
    proxy_oracle_metrics: Sequence[Mapping[str, float]],
    test: Examples,
    *,
    seeds: Sequence[int],
) -> Selection:
    """Pick the grid value whose proxy unlearning is closest to the proxy oracles.

    Args:
        parameter: label of the searched hyperparameter (recorded only).
        candidates: grid value -> the method configured with it, in grid order.
        originals: models trained on the whole training set (not modified).
        train: the training set :math:`S`.
        proxy_indices: :math:`F' \\subset R`, positions in ``train``.
        proxy_oracle_metrics: UA / RA / TA / MIA of each oracle retrained on
            :math:`S \\setminus F'`.
        test: the evaluation test set (TA, MIA non-members).
        seeds: request seed of each original.

    Raises:
        ValueError: an empty grid, or every value diverged.
    """
    if not candidates:
        raise ValueError("the hyperparameter grid is empty")
    oracle = mean_metrics(proxy_oracle_metrics)
    scores, metrics = [], []
    for method in candidates.values():
        try:
            group = unlearn_each(method, originals, train, proxy_indices, test, seeds=seeds)
        except FloatingPointError:
            scores.append(None)
            metrics.append(None)
            continue
        metrics.append(mean_metrics(group.metrics))
        scores.append(average_gap(metrics[-1], oracle))
    grid = list(candidates)
    finite = [np.inf if score is None else score for score in scores]
    if np.isinf(finite).all():
        raise ValueError(f"every value of {parameter} in {grid} diverged on the proxy forget set")
    return Selection(parameter, grid, scores, metrics, oracle, grid[int(np.argmin(finite))])


def tune_on_proxy(
    parameter: str,
    candidates: Mapping[Any, UnlearningMethod],
    forget_set: ForgetSet,
    originals: Sequence[nn.Module],
    train: Examples,
    test: Examples,
    *,
    seeds: Sequence[int],
    model_factory: Callable[[], nn.Module],
    config: TrainConfig,
    oracle_seeds: Sequence[int],
    oracle_root: str | os.PathLike,
) -> Selection:
    """The whole rule: draw ``forget_set``'s proxy, train (or load) its oracles, select.

    Args:
        parameter, candidates, originals, train: as :func:`select_on_proxy`.
        forget_set: the real forget set's rule; only its :meth:`proxy` is used.
        test: the full test set (the proxy decides which examples evaluate it).
        seeds: request seed of each original (normally the original's training seed).
        model_factory, config: the recipe the oracles are retrained with.
        oracle_seeds: one proxy oracle per seed.
        oracle_root: where oracles are kept (see :func:`unlearn.oracle_directory`).
    """
    proxy = forget_set.proxy(train)
    indices, proxy_test = proxy.indices(train), proxy.evaluation_test(test)
    oracles = load_or_train_oracles(
        model_factory, train, indices, config, oracle_seeds, oracle_root
    )
    split = ForgetSplit.of(train, forget_request(indices, train))
    oracle_metrics = metrics_of(oracles.models, split, proxy_test, seeds=oracle_seeds)
    return select_on_proxy(
        parameter, candidates, originals, train, indices, oracle_metrics, proxy_test, seeds=seeds
    )
