"""Summaries of counterfactual retraining runs: tidy records, mean drop and flip fraction per
(removal, k) with percentile-bootstrap intervals over queries, and each method against random
paired by query and seed (see :mod:`tda.eval.counterfactual` for what a run is).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tda.eval.counterfactual import RANDOM, QueryOutcomes, Removal, Retrain, plan_removals
from tda.eval.lds import _bootstrap_interval

if TYPE_CHECKING:
    from tda.eval.counterfactual_store import CounterfactualStore


@dataclass(frozen=True)
class Estimate:
    """A mean over queries with its percentile-bootstrap interval (queries resampled)."""

    mean: float
    ci_low: float
    ci_high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}]"


@dataclass(frozen=True)
class CounterfactualRecord:
    """One run, tidy: ``drop = output_full - output``; ``flipped``: the arg-max class changed."""

    query: int
    k: int
    removal: str
    seed: int
    output_full: float
    output: float
    drop: float
    prediction_full: int
    prediction: int
    flipped: bool
    n_positive: int | None


@dataclass(frozen=True)
class CounterfactualSummary:
    """Mean drop and flip fraction of one (removal, k) over queries (each averaged over seeds)."""

    removal: str
    k: int
    drop: Estimate
    flipped: Estimate
    n_queries: int
    n_seeds: int


@dataclass(frozen=True)
class CounterfactualComparison:
    """``method`` minus random at one ``k``, paired by query and seed: extra drop and extra flip
    fraction (per query, the mean over the seeds both ran)."""

    method: str
    k: int
    extra_drop: Estimate
    extra_flipped: Estimate
    n_queries: int


@dataclass(frozen=True, eq=False)
class CounterfactualResult:
    """Every run (tidy records), per-(removal, k) summaries, and each method against random.

    ``dataclasses.asdict(result)`` is its JSON-serialisable form.
    """

    records: list[CounterfactualRecord]
    summaries: list[CounterfactualSummary]
    comparisons: list[CounterfactualComparison]
    confidence: float

    def __str__(self) -> str:
        level = f"{100 * self.confidence:g}% CI"
        lines = [f"removal, k: drop [{level}], flipped fraction [{level}], queries x seeds"]
        lines += [
            f"{s.removal}, {s.k}: {s.drop}, {s.flipped}, {s.n_queries} x {s.n_seeds}"
            for s in self.summaries
        ]
        lines += [
            f"{c.method} - random, {c.k}: {c.extra_drop}, {c.extra_flipped}, {c.n_queries}"
            for c in self.comparisons
        ]
        return "\n".join(lines)


def counterfactual_result(
    store: CounterfactualStore,
    removals: Iterable[Removal],
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> CounterfactualResult:
    """Reads the recorded runs of ``removals`` and summarises them with bootstrap intervals.

    Removals may come from several :func:`plan_removals` calls (methods sharing the random
    control); duplicates are read once. Each query is averaged over its seeds, then intervals
    resample queries; comparisons pair each method with random by query and seed.

    Args:
        store: Where the runs are recorded.
        removals: The planned runs to summarise.
        confidence: Confidence level of the intervals.
        n_bootstrap: Bootstrap resamples of the queries.
        seed: Seed of the bootstrap.

    Raises:
        RuntimeError: If a run or a full-data model is not recorded yet.
        ValueError: If a recorded run is stale (see :meth:`CounterfactualStore.load`), or on a
            bad ``confidence`` or ``n_bootstrap``.
    """
    if not 0.0 < confidence < 1.0 or n_bootstrap < 1:
        raise ValueError(
            f"need 0 < confidence < 1 and n_bootstrap >= 1, got {confidence}, {n_bootstrap}"
        )
    removals = list(dict.fromkeys(removals))
    full = {s: store.full(s) for s in sorted({removal.seed for removal in removals})}
    records = [_record(removal, store.load(removal), full[removal.seed]) for removal in removals]
    groups = _grouped(records)

    def estimate(values: Sequence[float]) -> Estimate:
        low, high = _bootstrap_interval(np.asarray(values), confidence, n_bootstrap, seed)
        return Estimate(float(np.mean(values)), low, high)

    summaries = [
        CounterfactualSummary(
            removal,
            k,
            estimate([drop for drop, _ in _query_means(runs).values()]),
            estimate([flipped for _, flipped in _query_means(runs).values()]),
            n_queries=len(runs),
            n_seeds=len({record.seed for per_query in runs.values() for record in per_query}),
        )
        for (removal, k), runs in groups.items()
    ]
    return CounterfactualResult(records, summaries, _comparisons(groups, estimate), confidence)


def counterfactual_retraining(
    store: CounterfactualStore,
    retrain: Retrain,
    scores: np.ndarray | torch.Tensor,
    queries: Sequence[int],
    ks: Sequence[int],
    seeds: Sequence[int],
    *,
    method: str,
    random_seed: int = 0,
    progress: bool = True,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
) -> CounterfactualResult:
    """Plans, runs (resuming what ``store`` holds) and summarises one method against random.

    See :func:`plan_removals`, :meth:`CounterfactualStore.run` and :func:`counterfactual_result`.
    """
    removals = plan_removals(scores, queries, ks, seeds, method=method, random_seed=random_seed)
    store.run(retrain, removals, progress=progress)
    return counterfactual_result(store, removals, confidence=confidence, n_bootstrap=n_bootstrap)


def _record(
    removal: Removal, stored: Mapping[str, Any], full: QueryOutcomes
) -> CounterfactualRecord:
    """The run of ``removal`` (its ``n_positive`` from the planned scores: a recorded run removing
    the same examples may have been planned from other scores)."""
    query = removal.query
    output_full, prediction_full = float(full.outputs[query]), int(full.predictions[query])
    return CounterfactualRecord(
        query=query,
        k=removal.k,
        removal=removal.removal,
        seed=removal.seed,
        output_full=output_full,
        output=stored["output"],
        drop=output_full - stored["output"],
        prediction_full=prediction_full,
        prediction=stored["prediction"],
        flipped=stored["prediction"] != prediction_full,
        n_positive=removal.n_positive,
    )


def _grouped(
    records: list[CounterfactualRecord],
) -> dict[tuple[str, int], dict[int, list[CounterfactualRecord]]]:
    """``(removal, k) -> {query: runs}``, methods before random, then by k."""
    groups: dict[tuple[str, int], dict[int, list[CounterfactualRecord]]] = {}
    for record in records:
        by_query = groups.setdefault((record.removal, record.k), {})
        by_query.setdefault(record.query, []).append(record)
    order = sorted(groups, key=lambda key: (key[0] == RANDOM, key[0], key[1]))
    return {key: groups[key] for key in order}


def _query_means(runs: dict[int, list[CounterfactualRecord]]) -> dict[int, tuple[float, float]]:
    """``{query: (mean drop, flip fraction)}`` over the query's seeds."""
    return {
        query: (
            float(np.mean([r.drop for r in per_query])),
            float(np.mean([r.flipped for r in per_query])),
        )
        for query, per_query in runs.items()
    }


def _comparisons(
    groups: dict[tuple[str, int], dict[int, list[CounterfactualRecord]]],
    estimate: Callable[[Sequence[float]], Estimate],
) -> list[CounterfactualComparison]:
    """Each method minus random at the same k, paired by query and seed (see
    :func:`_paired_differences`), on the queries both cover."""
    comparisons = []
    for (removal, k), runs in groups.items():
        if removal == RANDOM or (RANDOM, k) not in groups:
            continue
        differences = _paired_differences(runs, groups[RANDOM, k])
        if len(differences) == 0:
            continue
        comparisons.append(
            CounterfactualComparison(
                removal,
                k,
                estimate(differences[:, 0]),
                estimate(differences[:, 1]),
                len(differences),
            )
        )
    return comparisons


def _paired_differences(
    method: dict[int, list[CounterfactualRecord]], control: dict[int, list[CounterfactualRecord]]
) -> np.ndarray:
    """``[n_paired_queries, 2]``: per query, the mean over the seeds both removals ran of the
    method's drop and flip minus random's at the same seed (queries sharing no seed are left out),
    so a control that ran more seeds (another method's plan) is not averaged over seeds the
    method never ran."""
    differences = []
    for query in sorted(set(method) & set(control)):
        by_seed = {record.seed: record for record in control[query]}
        pairs = [(r, by_seed[r.seed]) for r in method[query] if r.seed in by_seed]
        if pairs:
            differences.append(
                np.mean([(m.drop - c.drop, float(m.flipped) - c.flipped) for m, c in pairs], 0)
            )
    return np.array(differences)
