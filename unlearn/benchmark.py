r"""Benchmark an unlearner against oracles: UA / RA / TA / MIA, average gap, KLOM, relative time.

The protocol (METHODS.md, "Unlearning"): :math:`N` originals trained on :math:`S` with seeds
:math:`0..N-1`; the unlearner is applied to each with the request seed equal to the original's
seed; :math:`N` oracles retrained on :math:`R` with their own seeds; optionally :math:`N` more
oracles for the KLOM floor. Reported:

- each metric's mean over the :math:`N` runs with a 95% Student-t interval, for the unlearned
  models and for the oracles;
- the average gap :math:`\frac14\sum_k |\bar m_k - \bar m^{o}_k|` between the means (the number
  papers report) and the mean over :math:`i` of the gap between unlearned model :math:`i` and
  oracle :math:`i` (with its interval);
- KLOM P95 on forget, retain and validation points, and the oracle-vs-oracle floor;
- unlearning time of each run divided by the median oracle training time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from torch import nn

from tda.data.examples import Examples
from tda.task import Task
from unlearn.forget_sets import forget_request
from unlearn.klom import klom, klom_interval, klom_per_point, margins_of
from unlearn.methods.base import ForgetSplit, UnlearningMethod
from unlearn.metrics import GAP_METRICS, average_gap, unlearning_metrics
from unlearn.unlearner import Unlearner


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and Student-t confidence half-width of ``values`` (``None`` for fewer than 2)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError(f"need finite values for an interval, got {array.tolist()}")
    half = None
    if array.size >= 2:
        scale = array.std(ddof=1) / math.sqrt(array.size)
        half = float(stats.t.ppf(0.5 + confidence / 2, array.size - 1) * scale)
    return {"mean": float(array.mean()), "ci95": half, "n": int(array.size)}


def mean_metrics(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over runs (every run must have the same keys)."""
    if not runs:
        raise ValueError("no runs to average")
    return {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}


@dataclass(frozen=True)
class UnlearnedGroup:
    """The unlearner applied to each original: models, metrics and wall-clock seconds."""

    models: list[nn.Module]
    metrics: list[dict[str, float]]
    seconds: list[float]


def unlearn_each(
    method: UnlearningMethod,
    originals: Sequence[nn.Module],
    train: Examples,
    forget_indices: np.ndarray,
    test: Examples,
    *,
    seeds: Sequence[int],
) -> UnlearnedGroup:
    """Run ``method`` on every original (request seed = the original's seed)."""
    if len(originals) != len(seeds):
        raise ValueError(f"{len(originals)} originals but {len(seeds)} seeds")
    models, metrics, seconds = [], [], []
    for model, seed in zip(originals, seeds, strict=True):
        request = forget_request(forget_indices, train, seed=seed)
        unlearner = Unlearner(method, compare_before=False)  # the originals are measured apart
        result = unlearner.unlearn(model, train, request, test_data=test)
        models.append(result.model)
        metrics.append(result.metrics)
        seconds.append(result.timings["unlearn"])
    return UnlearnedGroup(models, metrics, seconds)


def unlearn_each_stable(
    candidates: Sequence[tuple[Any, UnlearningMethod]],
    originals: Sequence[nn.Module],
    train: Examples,
    forget_indices: np.ndarray,
    test: Examples,
    *,
    seeds: Sequence[int],
) -> tuple[Any, UnlearnedGroup, list[Any]]:
    """:func:`unlearn_each` with the first candidate that does not diverge on any original.

    Divergence (a NaN or infinite loss or weight) is something the unlearner sees on its own run,
    without any oracle, so falling back to the next candidate (e.g. the next-best tuned value)
    stays within the honest protocol.

    Returns:
        The label of the candidate used, its group, and the labels of those that diverged.

    Raises:
        FloatingPointError: every candidate diverged.
    """
    diverged = []
    for label, method in candidates:
        try:
            return (
                label,
                unlearn_each(method, originals, train, forget_indices, test, seeds=seeds),
                diverged,
            )
        except FloatingPointError:
            diverged.append(label)
    raise FloatingPointError(f"unlearning diverged with every candidate {diverged}")


def metrics_of(
    models: Sequence[nn.Module], split: ForgetSplit, test: Examples, *, seeds: Sequence[int]
) -> list[dict[str, float]]:
    """UA / RA / TA / MIA of each model (e.g. the oracles), MIA seeded per model."""
    return [
        unlearning_metrics(model, split.forget, split.retain, test, seed=seed)
        for model, seed in zip(models, seeds, strict=True)
    ]


def gap_report(
    unlearned: Sequence[Mapping[str, float]], oracle: Sequence[Mapping[str, float]]
) -> dict[str, Any]:
    """Per-metric intervals for both groups, the gap of the means and the paired gap."""
    paired = [average_gap(u, o) for u, o in zip(unlearned, oracle, strict=True)]
    return {
        "metrics": {k: interval([run[k] for run in unlearned]) for k in GAP_METRICS},
        "oracle_metrics": {k: interval([run[k] for run in oracle]) for k in GAP_METRICS},
        "average_gap": average_gap(mean_metrics(unlearned), mean_metrics(oracle)),
        "paired_gap": interval(paired),
    }


def klom_report(
    unlearned: Sequence[nn.Module],
    oracles: Sequence[nn.Module],
    floor_oracles: Sequence[nn.Module] | None,
    points: Mapping[str, Examples],
    *,
    task: Task | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """KLOM P95, KL(unlearned || oracle), per named point set, with its 95% bootstrap interval
    over the points (``<name>_ci95``), and the floor if given. ``task`` supplies the measured
    output (default the classification margin; a language model's sequence log-likelihood with
    :class:`~tda.task.LanguageModelingTask`); ``settings`` (``bins``, ``clip``, ``epsilon``) go
    to :func:`~unlearn.klom.klom_per_point`.

    Fewer models on a side than bins leave most points' histograms apart, and KLOM saturates
    near its ceiling whatever the models do: a ``UserWarning`` says so."""
    _warn_if_saturating(min(len(unlearned), len(oracles)), settings.get("bins", 20))
    percentile = 95.0
    report: dict[str, Any] = {"direction": "KL(unlearned || oracle)", "percentile": percentile}
    for name, examples in points.items():
        reference = margins_of(oracles, examples, task=task)
        judged = margins_of(unlearned, examples, task=task)
        per_point = klom_per_point(judged, reference, **settings)
        report[name] = float(np.percentile(per_point, percentile))
        report[f"{name}_ci95"] = list(klom_interval(per_point, percentile=percentile))
        if floor_oracles is not None:
            floor = margins_of(floor_oracles, examples, task=task)
            report[f"{name}_floor"] = klom(floor, reference, percentile=percentile, **settings)
    return report


def _warn_if_saturating(models: int, bins: int) -> None:
    if models < bins:
        warnings.warn(
            f"KLOM with {models} models on a side and {bins} bins: most points' histograms "
            "share no bin, so KLOM saturates near its ceiling whatever the models do; use at "
            "least as many models as bins, or fewer bins (bins=...)",
            stacklevel=3,
        )


def benchmark(
    group: UnlearnedGroup,
    oracles: Sequence[nn.Module],
    oracle_metrics: Sequence[Mapping[str, float]],
    oracle_seconds: Sequence[float],
    split: ForgetSplit,
    validation: Examples,
    *,
    floor_oracles: Sequence[nn.Module] | None = None,
) -> dict[str, Any]:
    """The full report for one method and one forget set (see the module docstring)."""
    recorded = np.asarray(oracle_seconds, dtype=np.float64)
    if not np.isfinite(recorded).any():
        raise ValueError("no oracle training time was recorded; time cannot be made relative")
    reference_seconds = float(np.nanmedian(recorded))
    points = {"forget": split.forget, "retain": split.retain, "validation": validation}
    return {
        **gap_report(group.metrics, oracle_metrics),
        "klom": klom_report(group.models, oracles, floor_oracles, points),
        "seconds": interval(group.seconds),
        "oracle_seconds": reference_seconds,
        "time_fraction": interval([s / reference_seconds for s in group.seconds]),
    }


def untouched_report(
    originals: Sequence[nn.Module],
    oracles: Sequence[nn.Module],
    oracle_metrics: Sequence[Mapping[str, float]],
    split: ForgetSplit,
    test: Examples,
    validation: Examples,
    *,
    seeds: Sequence[int],
) -> dict[str, Any]:
    """Metrics, average gap and KLOM of the originals themselves: where every unlearner starts."""
    metrics = metrics_of(originals, split, test, seeds=seeds)
    gaps = gap_report(metrics, oracle_metrics)
    points = {"forget": split.forget, "retain": split.retain, "validation": validation}
    return {
        "metrics": gaps["metrics"],
        "average_gap": gaps["average_gap"],
        "klom": klom_report(originals, oracles, None, points),
    }
