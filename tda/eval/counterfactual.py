r"""Counterfactual retraining: remove a query's top-attributed training examples and retrain.

For a query :math:`x_q` and scores :math:`\tau(x_q)` (library convention: positive = the training
example pushes the query's output up), remove the ``k`` highest-scored training examples, retrain
with seed ``s`` and measure

* the **drop** :math:`f(x_q; \theta_s) - f(x_q; \theta_{s, S \setminus R_k})` of the task output
  (the margin for classification), where :math:`\theta_s` is the model trained on the full data
  with the *same* seed ``s`` (same initialisation and shuffling seed), so seed noise cancels in
  the difference;
* whether the prediction (arg-max class) **flipped**: differs from that of :math:`\theta_s`.

The control removes ``k`` uniformly random training examples (seeded by ``random_seed``, the
query and the retraining seed; the ``k`` are nested: the first ``k`` of one permutation). A good
attribution's drop is large and positive and well above the random one. Summaries average each
query over seeds first, then report the mean over queries with a percentile-bootstrap interval
(queries resampled, as for the LDS); the comparison with random is paired by query.

Runs are recorded in a :class:`CounterfactualStore`, one small file per (query, k, removal, seed)
plus one per full-data seed, each published atomically and never modified, so a killed run
resumes, and jobs of a Hydra multirun (over queries or seeds) can share one directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tda.data.examples import Examples
from tda.eval.lds import _bootstrap_interval
from tda.models import build_model
from tda.outputs import logits_of
from tda.task import ClassificationTask, Task
from tda.training import TrainConfig, train_on

if TYPE_CHECKING:
    from tda.eval.counterfactual_store import CounterfactualStore

RANDOM = "random"
"""Name of the control removal: ``k`` uniformly random training examples."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class QueryOutcomes:
    """One model on the whole query set: task outputs and arg-max classes, ``[n_query]`` each."""

    outputs: np.ndarray
    predictions: np.ndarray


Retrain = Callable[[np.ndarray, int], QueryOutcomes]
"""``retrain(keep, seed)``: train with ``seed`` on the examples where ``keep [n_train]`` is True."""


@dataclass(frozen=True)
class RemovalRetrainer:
    """Train ``model_factory()`` (initialised from the seed) on the kept examples; measure queries.

    Args:
        model_factory: builds an untrained model.
        train_data: the full training set that ``keep`` masks index.
        queries: the query set (all of it; a removal reads its own query).
        config: the training recipe of the attributed models.
        task: defines the output (the margin by default).
        aligned_batches: train in the full-data run's minibatches minus the removed examples
            (``tda.train(keep=...)``), so that a removal is compared with the full model of the
            same seed without a reshuffle of every batch; default: reshuffle the kept examples.
    """

    model_factory: Callable[[], nn.Module]
    train_data: Examples
    queries: Examples
    config: TrainConfig = TrainConfig()
    task: Task = ClassificationTask()
    aligned_batches: bool = False

    def __call__(self, keep: np.ndarray, seed: int) -> QueryOutcomes:
        model = build_model(self.model_factory, seed)
        train_on(
            model,
            self.train_data,
            np.asarray(keep),
            self.config,
            seed,
            self.task,
            self.aligned_batches,
        )
        logits = logits_of(model, self.queries)
        outputs = self.task.output(logits, self.queries.targets)
        return QueryOutcomes(outputs.double().numpy(), logits.argmax(-1).numpy())


@dataclass(frozen=True)
class Removal:
    """One planned run: drop ``removed`` (``k`` training indices) for ``query``, retrain ``seed``.

    ``removal`` is the method's name, or :data:`RANDOM` for the control; ``n_positive`` counts the
    removed examples with a positive score (``None`` for the control).
    """

    query: int
    k: int
    removal: str
    seed: int
    removed: tuple[int, ...]
    n_positive: int | None = None


def plan_removals(
    scores: np.ndarray | torch.Tensor,
    queries: Sequence[int],
    ks: Sequence[int],
    seeds: Sequence[int],
    *,
    method: str,
    random_seed: int = 0,
) -> list[Removal]:
    """The runs of a counterfactual evaluation: top-``k`` and random-``k`` removals per seed.

    Args:
        scores: Attribution scores ``[n_query, n_train]`` (numpy, memory-mapped numpy or torch);
            only the rows of ``queries`` are read.
        queries: Rows of ``scores`` (positions in the query set) to evaluate.
        ks: Numbers of examples to remove, each in ``[1, n_train)``.
        seeds: Retraining seeds.
        method: Name of the attribution (a file-name-safe word other than ``"random"``).
        random_seed: Seed of the random control.

    Returns:
        For every query, k and seed: the method's removal (the ``k`` highest scores, ties to the
        lower index), then the random one.
    """
    n_query, n_train = scores.shape
    queries, ks, seeds = _checked_plan(queries, ks, seeds, method, n_query, n_train)
    plan = []
    for query in queries:
        row = np.asarray(scores[query], dtype=np.float64).reshape(-1)
        if not np.isfinite(row).all():
            raise ValueError(f"the scores of query {query} hold non-finite values")
        ranked = np.argsort(-row, kind="stable")
        for seed in seeds:
            shuffled = np.random.default_rng([random_seed, query, seed]).permutation(n_train)
            for k in ks:
                top = ranked[:k]
                positive = int((row[top] > 0).sum())
                plan.append(Removal(query, k, method, seed, _indices(top), positive))
                plan.append(Removal(query, k, RANDOM, seed, _indices(shuffled[:k])))
    return plan


def _indices(array: np.ndarray) -> tuple[int, ...]:
    return tuple(int(index) for index in array)


def _checked_plan(queries, ks, seeds, method, n_query, n_train):
    """Validates the arguments of :func:`plan_removals`; returns them as lists of ints."""
    queries, ks, seeds = ([int(v) for v in values] for values in (queries, ks, seeds))
    if not _NAME.match(method) or method == RANDOM:
        raise ValueError(
            f"method must be a file-name-safe word other than {RANDOM!r}, got {method!r}"
        )
    for name, values in (("queries", queries), ("ks", ks), ("seeds", seeds)):
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{name} must be non-empty and distinct, got {values}")
    if not all(0 <= query < n_query for query in queries):
        raise ValueError(f"queries {queries} must lie in [0, {n_query}) (rows of the scores)")
    if not all(1 <= k < n_train for k in ks):
        raise ValueError(
            f"every k in {ks} must lie in [1, {n_train}) for {n_train} training examples"
        )
    return queries, sorted(ks), seeds


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
    """``method`` minus random at one ``k``, paired by query: extra drop and extra flip fraction."""

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
    resample queries; comparisons pair each method with random query by query.

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
    records = [_record(store.load(removal), full[removal.seed]) for removal in removals]
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


def _record(stored: Mapping[str, Any], full: QueryOutcomes) -> CounterfactualRecord:
    query = stored["query"]
    output_full, prediction_full = float(full.outputs[query]), int(full.predictions[query])
    return CounterfactualRecord(
        query=query,
        k=stored["k"],
        removal=stored["removal"],
        seed=stored["seed"],
        output_full=output_full,
        output=stored["output"],
        drop=output_full - stored["output"],
        prediction_full=prediction_full,
        prediction=stored["prediction"],
        flipped=stored["prediction"] != prediction_full,
        n_positive=stored["n_positive"],
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
    """Each method minus random at the same k, on the queries both cover."""
    comparisons = []
    for (removal, k), runs in groups.items():
        if removal == RANDOM or (RANDOM, k) not in groups:
            continue
        method, control = _query_means(runs), _query_means(groups[RANDOM, k])
        paired = sorted(set(method) & set(control))
        if not paired:
            continue
        differences = np.array([np.subtract(method[q], control[q]) for q in paired])
        comparisons.append(
            CounterfactualComparison(
                removal, k, estimate(differences[:, 0]), estimate(differences[:, 1]), len(paired)
            )
        )
    return comparisons
