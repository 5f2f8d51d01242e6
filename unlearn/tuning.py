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

The average gap sees accuracies only: two values that both misclassify :math:`F'` score alike
however far their margins are from the oracles'. The ``"gap+klom"`` criterion also measures
KLOM P95 on :math:`F'` (the proxy models' margins against the proxy oracles', as
:mod:`unlearn.klom` judges :math:`F`; it needs enough models for its histograms, e.g. 20) and
scores :math:`v` by

.. math:: \frac{\mathrm{gap}(v)}{\mathrm{gap}_0} + \frac{\mathrm{KLOM}(v)}{\mathrm{KLOM}_0},

each measure as a fraction of what the untouched originals leave on :math:`F'` (no unlearning:
:math:`\mathrm{gap}_0`, :math:`\mathrm{KLOM}_0`), so the two measures the benchmark reports
weigh alike whatever their units and whatever the forget set. A limit: where every value's
KLOM sits at its cap on :math:`F'` (disjoint margin histograms, as for whole classes), its
differences are noise, yet still move the choice between values whose gaps are close.

One proxy is one other forget set, and what it ranks first need not be best on :math:`F` (a
class above all: classes differ in how far their removal moves their points). ``proxies=K``
scores every value on :math:`K` proxies (:meth:`ForgetSet.proxies`: the next :math:`K` classes,
or :math:`K` random draws) and averages the scores (:func:`average_selections`). Searches of
several variants of a method (one per optimiser, say), scored on the same proxies, are one search
over the union of their grids (:func:`join_selections`).

The chosen value is then used, unchanged, on :math:`F`; should it diverge there (which the
unlearner sees from its own loss, without any oracle), the next value of :meth:`Selection.ranking`
is used instead (:func:`unlearn.benchmark.unlearn_each_stable`). Grid, scores, choice and any
fallback are recorded. :func:`tune_on_proxy` runs the whole rule; :func:`select_on_proxy` is
steps 2-4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from tda.data.examples import Examples
from tda.fingerprint import array_fingerprint, model_fingerprint
from tda.training import TrainConfig
from unlearn.benchmark import mean_metrics, metrics_of, unlearn_each
from unlearn.ensembles import load_or_train_oracles
from unlearn.forget_sets import ForgetSet, forget_request
from unlearn.journal import SearchJournal
from unlearn.klom import klom, margins_of
from unlearn.methods.base import ForgetSplit, UnlearningMethod
from unlearn.metrics import average_gap

RULES = {
    "gap": (
        "minimise the average UA/RA/TA/MIA gap to oracles retrained without a proxy forget set "
        "drawn from the retain set (same kind and size as F); ties -> earliest grid value"
    ),
    "gap+klom": (
        "minimise gap/gap0 + KLOM/KLOM0: the average UA/RA/TA/MIA gap and KLOM P95 on a proxy "
        "forget set drawn from the retain set (same kind and size as F), both against oracles "
        "retrained without it, each as a fraction of the untouched originals' own; ties -> "
        "smaller gap, then earliest grid value"
    ),
}


@dataclass(frozen=True)
class Selection:
    """The outcome of a search.

    Attributes:
        parameter: what was searched (a label, e.g. ``"loop.optimizer.lr"``).
        grid: the values tried, in order.
        scores: what the criterion minimises for each value (the proxy average gap, or the sum
            of relative gap and KLOM); ``None`` where it diverged.
        metrics: mean proxy UA / RA / TA / MIA of each value; ``None`` where it diverged.
        oracle_metrics: mean proxy metrics of the proxy oracles.
        chosen: the selected value.
        criterion: ``"gap"`` or ``"gap+klom"`` (see the module docstring).
        gaps: proxy average gap of each value; ``None`` where it diverged.
        kloms: proxy forget-set KLOM P95 of each value (``"gap+klom"`` only).
        untouched: the untouched originals' proxy ``gap`` and ``klom`` (``"gap+klom"`` only).
        per_proxy: each proxy's own selection, where several were averaged.
    """

    parameter: str
    grid: list[Any]
    scores: list[float | None]
    metrics: list[dict[str, float] | None]
    oracle_metrics: dict[str, float]
    chosen: Any
    criterion: str = "gap"
    gaps: list[float | None] | None = None
    kloms: list[float | None] | None = None
    untouched: dict[str, float] | None = None
    per_proxy: list[dict[str, Any]] | None = None

    @property
    def rule(self) -> str:
        """The selection rule, in words."""
        return RULES[self.criterion]

    def ranking(self) -> list[Any]:
        """The values that did not diverge, best first (ties: smaller gap, then grid order)."""
        gaps = self.gaps if self.gaps is not None else self.scores
        scored = [(score, gaps[i], i) for i, score in enumerate(self.scores) if score is not None]
        return [self.grid[i] for *_, i in sorted(scored)]

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Selection:
        """The selection :meth:`to_dict` wrote (e.g. a benchmark result's ``"tuning"``)."""
        return cls(**{key: value for key, value in record.items() if key != "rule"})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "parameter": self.parameter,
            "grid": self.grid,
            "criterion": self.criterion,
            "scores": self.scores,
            "gaps": self.gaps,
            "kloms": self.kloms,
            "untouched": self.untouched,
            "per_proxy": self.per_proxy,
            "metrics": self.metrics,
            "oracle_metrics": self.oracle_metrics,
            "chosen": self.chosen,
            "rule": self.rule,
        }


def relative_sum(
    gaps: Sequence[float | None], kloms: Sequence[float | None], untouched: Mapping[str, float]
) -> list[float | None]:
    """Each value's gap and KLOM as fractions of the untouched originals' own, summed;
    ``None`` where a value diverged. Units at or below 1e-9 count as 1e-9."""
    gap_unit, klom_unit = (max(untouched[key], 1e-9) for key in ("gap", "klom"))
    return [
        None if gap is None else gap / gap_unit + measure / klom_unit
        for gap, measure in zip(gaps, kloms, strict=True)
    ]


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
    proxy_oracle_margins: np.ndarray | None = None,
    journal: SearchJournal | None = None,
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
        proxy_oracle_margins: margins ``[oracles, |F'|]`` of the proxy oracles on :math:`F'`
            in ascending index order; given, the criterion is ``"gap+klom"``, else ``"gap"``.
        journal: where finished evaluations are recorded and, on a re-run, read back instead
            of recomputed (:class:`~unlearn.journal.SearchJournal`).

    Raises:
        ValueError: an empty grid, or every value diverged.
    """
    if not candidates:
        raise ValueError("the hyperparameter grid is empty")
    oracle = mean_metrics(proxy_oracle_metrics)
    split = ForgetSplit.of(train, forget_request(proxy_indices, train))
    evaluate = _evaluation(
        originals, train, proxy_indices, split, test, seeds, proxy_oracle_margins, journal
    )
    outcomes = [evaluate(method) for method in candidates.values()]
    metrics = [outcome.get("metrics") for outcome in outcomes]
    gaps = [None if m is None else average_gap(m, oracle) for m in metrics]
    kloms = [outcome.get("klom") for outcome in outcomes]
    grid = list(candidates)
    if all(gap is None for gap in gaps):
        raise ValueError(f"every value of {parameter} in {grid} diverged on the proxy forget set")
    if proxy_oracle_margins is None:
        selection = Selection(parameter, grid, gaps, metrics, oracle, None, "gap", gaps)
    else:
        untouched = _untouched(originals, split, test, seeds, oracle, proxy_oracle_margins)
        scores = relative_sum(gaps, kloms, untouched)
        selection = Selection(
            parameter, grid, scores, metrics, oracle, None, "gap+klom", gaps, kloms, untouched
        )
    return replace(selection, chosen=selection.ranking()[0])


def _evaluation(originals, train, proxy, split, test, seeds, oracle_margins, journal):
    """``method -> {"metrics", "klom"}`` (``{}`` if it diverged) on the proxy, through
    ``journal`` when one is given."""

    def run(method: UnlearningMethod) -> dict:
        try:
            group = unlearn_each(method, originals, train, proxy, test, seeds=seeds)
        except FloatingPointError:
            return {}
        outcome = {"metrics": mean_metrics(group.metrics)}
        if oracle_margins is not None:
            outcome["klom"] = klom(margins_of(group.models, split.forget), oracle_margins)
        return outcome

    if journal is None:
        return run
    common = {
        "originals": [model_fingerprint(model) for model in originals],
        "train": train.fingerprint(),
        "test": test.fingerprint(),
        "proxy": array_fingerprint(np.sort(proxy)),
        "seeds": list(seeds),
        "oracle_margins": None if oracle_margins is None else array_fingerprint(oracle_margins),
    }

    def journaled(method: UnlearningMethod) -> dict:
        key = journal.key(method=method, **common)
        outcome = journal.get(key)
        if outcome is None:
            outcome = run(method)
            journal.put(key, outcome)
        return outcome

    return journaled


def _untouched(
    originals: Sequence[nn.Module],
    split: ForgetSplit,
    test: Examples,
    seeds: Sequence[int],
    oracle_metrics: Mapping[str, float],
    oracle_margins: np.ndarray,
) -> dict[str, float]:
    """The untouched originals' proxy average gap and forget-set KLOM (no unlearning at all)."""
    own = mean_metrics(metrics_of(originals, split, test, seeds=seeds))
    return {
        "gap": average_gap(own, oracle_metrics),
        "klom": klom(margins_of(originals, split.forget), oracle_margins),
    }


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
    criterion: str = "gap",
    proxies: int = 1,
    journal: SearchJournal | None = None,
) -> Selection:
    """The whole rule: draw ``forget_set``'s proxies, train (or load) their oracles, select.

    Args:
        parameter, candidates, originals, train: as :func:`select_on_proxy`.
        forget_set: the real forget set's rule; only its :meth:`proxies` are used.
        test: the full test set (each proxy decides which examples evaluate it).
        seeds: request seed of each original (normally the original's training seed).
        model_factory, config: the recipe the oracles are retrained with.
        oracle_seeds: one oracle per seed for every proxy.
        oracle_root: where oracles are kept (see :func:`unlearn.oracle_directory`).
        criterion: ``"gap"`` or ``"gap+klom"`` (see the module docstring).
        proxies: how many proxy forget sets to score every value on; with more than one the
            scores are averaged over them (:func:`average_selections`).
        journal: records finished evaluations so that a killed search resumes (as
            :func:`select_on_proxy`).

    Raises:
        ValueError: an unknown criterion (and as :func:`select_on_proxy`).
    """
    if criterion not in RULES:
        raise ValueError(f"unknown tuning criterion {criterion!r}; choose one of {list(RULES)}")
    selections = []
    for proxy in forget_set.proxies(train, proxies):
        indices, proxy_test = proxy.indices(train), proxy.evaluation_test(test)
        oracles = load_or_train_oracles(
            model_factory, train, indices, config, oracle_seeds, oracle_root
        )
        split = ForgetSplit.of(train, forget_request(indices, train))
        oracle_metrics = metrics_of(oracles.models, split, proxy_test, seeds=oracle_seeds)
        margins = margins_of(oracles.models, split.forget) if criterion == "gap+klom" else None
        selections.append(
            select_on_proxy(
                parameter,
                candidates,
                originals,
                train,
                indices,
                oracle_metrics,
                proxy_test,
                seeds=seeds,
                proxy_oracle_margins=margins,
                journal=journal,
            )
        )
    return selections[0] if len(selections) == 1 else average_selections(selections)


def average_selections(selections: Sequence[Selection]) -> Selection:
    """One selection from several proxies' of the same grid and criterion: every number is the
    mean over proxies (``None`` where a value diverged on any), the choice is re-made on the mean
    scores, and each proxy's own selection is kept in ``per_proxy``.

    Raises:
        ValueError: no selections, or selections of different grids or criteria.
    """
    if not selections:
        raise ValueError("no selections to average")
    first = selections[0]
    for other in selections[1:]:
        if (other.grid, other.criterion) != (first.grid, first.criterion):
            raise ValueError("selections to average must share their grid and criterion")

    def mean(field_name: str) -> list[float | None] | None:
        columns = [getattr(selection, field_name) for selection in selections]
        if columns[0] is None:
            return None
        rows = zip(*columns, strict=True)
        return [None if None in row else float(np.mean(row)) for row in rows]

    metrics = [
        None if None in row else mean_metrics(row)
        for row in zip(*(s.metrics for s in selections), strict=True)
    ]
    untouched = None if first.untouched is None else mean_metrics([s.untouched for s in selections])
    averaged = replace(
        first,
        scores=mean("scores"),
        gaps=mean("gaps"),
        kloms=mean("kloms"),
        metrics=metrics,
        oracle_metrics=mean_metrics([s.oracle_metrics for s in selections]),
        untouched=untouched,
        per_proxy=[s.to_dict() for s in selections],
    )
    if all(score is None for score in averaged.scores):
        raise ValueError(f"every value of {first.parameter} diverged on some proxy forget set")
    return replace(averaged, chosen=averaged.ranking()[0])


def join_selections(searches: Mapping[str, Selection]) -> Selection:
    """One search over the union of several searches' grids (e.g. one per optimiser): each grid
    value becomes ``[name, value]``, and the choice is re-made over all of them.

    Scores compare only when every search was scored on the same proxies, proxy oracles and
    untouched originals by the same criterion, so the searches must agree on ``criterion``,
    ``oracle_metrics`` and ``untouched``. ``per_proxy`` is dropped (each search keeps its own).

    Raises:
        ValueError: no searches, or a search scored on other proxies or by another criterion.
    """
    if not searches:
        raise ValueError("no searches to join")
    (first_name, first), *others = searches.items()
    for name, other in others:
        if (other.criterion, other.oracle_metrics, other.untouched) != (
            first.criterion,
            first.oracle_metrics,
            first.untouched,
        ):
            raise ValueError(
                f"search {name!r} was scored on other proxies or by another criterion than "
                f"{first_name!r}: their scores do not compare"
            )

    def concatenated(field_name: str) -> list | None:
        columns = [getattr(search, field_name) for search in searches.values()]
        return None if None in columns else [item for column in columns for item in column]

    parameters = dict.fromkeys(search.parameter for search in searches.values())
    joined = replace(
        first,
        parameter="variant, " + " / ".join(parameters),
        grid=[[name, value] for name, search in searches.items() for value in search.grid],
        scores=concatenated("scores"),
        metrics=concatenated("metrics"),
        gaps=concatenated("gaps"),
        kloms=concatenated("kloms"),
        per_proxy=None,
    )
    if all(score is None for score in joined.scores):
        raise ValueError("every value of every search diverged on the proxy")
    return replace(joined, chosen=joined.ranking()[0])
