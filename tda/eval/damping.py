r"""Damping chosen by data: pick :math:`\lambda` by LDS on one part of the ground truth.

Every attributor with a curvature has a damping :math:`\lambda` (TRAK's relative ridge, the
absolute :math:`\lambda` of an influence-function solver). :func:`select_damping` replaces
hand-tuning: it scores the queries once per grid value, measures the LDS (:func:`tda.eval.lds`)
on a *selection* part of the ground truth, keeps the best value, and measures that value's LDS on
a disjoint *report* part.

Why the report part: the grid maximum of an LDS measured on the subsets that chose it is biased
upwards (the same retraining noise that made it the best value is rewarded again), so an LDS
reported on the selection part is optimistic. Only :attr:`DampingChoice.report` is an honest
estimate; the selection values are for looking at the curve, not for tables.

By default the split is over the ground-truth *subsets* (rows of ``masks``/``outputs``) and
every query appears in both parts. ``split="queries"`` splits the queries instead (every subset in
both parts), and ``split="both"`` splits both, so that nothing at all is shared.

Example (TRAK refits per value; a fitted K-FAC/EK-FAC solver can be re-damped for free)::

    choice = select_damping(
        lambda d: TRAK(damping=d).fit(store).score("query"), [1e-3, 1e-2, 1e-1, 1],
        truth.masks, truth.outputs(),
    )
    fitted = influence.fitted_solver
    def score_with(damping):
        influence.fitted_solver = dataclasses.replace(fitted, damping=damping)
        return influence.score(queries)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from tda.arguments import check_open_unit
from tda.curvature.base import SolverDivergedError
from tda.eval.lds import _MIN_SUBSETS, LDSResult, lds

Split = Literal["subsets", "queries", "both"]
"""What :func:`select_damping` holds out: ground-truth subsets, queries, or both at once."""


@dataclass(frozen=True, eq=False)
class DampingChoice:
    """The damping picked on the selection part and its LDS on the report part.

    Attributes:
        damping: The grid value with the highest selection LDS (the first such value on ties).
        report: LDS of ``damping`` on the report part; never seen by the selection.
        grid: The grid values, in the order given.
        selection: Selection-part LDS of each grid value; ``None`` where the solver diverged.
            Optimistic for the chosen value: do not report it.
        failures: Message of each grid value whose scoring raised ``SolverDivergedError``.
        selection_subsets: Row indices of ``masks`` used to select (sorted).
        report_subsets: Row indices used to report (sorted), disjoint from the selection ones
            unless ``split="queries"``.
        selection_queries: Query indices used to select (sorted).
        report_queries: Query indices used to report (sorted), disjoint from the selection ones
            unless ``split="subsets"``.
        split: What was held out.
    """

    damping: float
    report: LDSResult
    grid: tuple[float, ...]
    selection: tuple[LDSResult | None, ...]
    failures: dict[float, str]
    selection_subsets: np.ndarray
    report_subsets: np.ndarray
    selection_queries: np.ndarray
    report_queries: np.ndarray
    split: Split

    def __str__(self) -> str:
        curve = ", ".join(
            f"{value:g}: {'diverged' if result is None else f'{result.mean:.3f}'}"
            for value, result in zip(self.grid, self.selection, strict=True)
        )
        return (
            f"damping {self.damping:g} chosen on {self.selection_subsets.size} subsets x "
            f"{self.selection_queries.size} queries (selection LDS {curve}); "
            f"held-out {self.report}"
        )


def select_damping(
    score_with: Callable[[float], np.ndarray | torch.Tensor],
    grid: Sequence[float],
    masks: np.ndarray,
    outputs: np.ndarray,
    *,
    holdout_fraction: float = 0.5,
    seed: int = 0,
    split: Split = "subsets",
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
) -> DampingChoice:
    """Picks the damping with the best LDS on a selection part and reports it on a held-out part.

    Args:
        score_with: ``score_with(damping)`` returns scores ``[n_query, n_train]`` (library sign
            convention) for that damping; called once per grid value.
        grid: Candidate dampings: finite, non-negative and distinct.
        masks: Ground-truth subset masks ``[count, n_train]``.
        outputs: Measured outputs ``[count, n_query]`` or ``[count, n_seeds, n_query]``.
        holdout_fraction: Fraction of the subsets (and/or queries) held out for the report.
        seed: Seed of the random split (``numpy.random.default_rng``); same seed, same split.
        split: ``"subsets"`` (default), ``"queries"`` or ``"both"``: what is held out.
        confidence: Confidence level of the LDS bootstrap intervals.
        n_bootstrap: Bootstrap resamples of the queries per LDS.

    Returns:
        The choice, the selection LDS of every grid value, and the report LDS of the choice.

    Raises:
        ValueError: On a bad grid, fraction or split, too few subsets or queries for two parts,
            or when every grid value diverged.
    """
    values = _checked_grid(grid)
    masks, outputs = np.asarray(masks), np.asarray(outputs)
    if outputs.ndim not in (2, 3) or outputs.shape[0] != masks.shape[0]:
        raise ValueError(
            f"outputs of shape {outputs.shape} do not match masks of shape {masks.shape}: "
            "need [count, (n_seeds,) n_query] with one row per mask"
        )
    rows, queries = _split_indices(masks.shape[0], outputs.shape[-1], holdout_fraction, seed, split)
    evaluate = dict(confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)

    def part_lds(scores: np.ndarray, part: int) -> LDSResult:
        chosen = queries[part]
        return lds(scores[chosen], masks[rows[part]], outputs[rows[part]][..., chosen], **evaluate)

    selection, failures, best, best_scores = _selection_curve(
        score_with, values, outputs.shape[-1], lambda scores: part_lds(scores, 0)
    )
    report = part_lds(best_scores, 1)
    return DampingChoice(
        damping=best,
        report=report,
        grid=values,
        selection=tuple(selection),
        failures=failures,
        selection_subsets=rows[0],
        report_subsets=rows[1],
        selection_queries=queries[0],
        report_queries=queries[1],
        split=split,
    )


def _selection_curve(
    score_with: Callable[[float], np.ndarray | torch.Tensor],
    values: tuple[float, ...],
    n_query: int,
    selection_lds: Callable[[np.ndarray], LDSResult],
) -> tuple[list[LDSResult | None], dict[float, str], float, np.ndarray]:
    """Scores every grid value; returns the selection LDS curve, failures, and the leader."""
    selection, failures = [], {}
    best, best_scores = None, None  # only the leading score matrix is kept in memory
    for value in values:
        try:
            scores = _as_array(score_with(value), n_query, value)
        except SolverDivergedError as error:
            failures[value] = str(error)
            selection.append(None)
            continue
        selection.append(selection_lds(scores))
        if best is None or selection[-1].mean > selection[values.index(best)].mean:
            best, best_scores = value, scores  # strict: the first value wins ties
    if best is None:
        raise ValueError(f"every damping in {list(values)} diverged: {failures}")
    return selection, failures, best, best_scores


def _checked_grid(grid: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(value) for value in grid)
    if not values:
        raise ValueError("the damping grid is empty")
    bad = [value for value in values if not math.isfinite(value) or value < 0]
    if bad:
        raise ValueError(f"dampings must be finite and non-negative, got {bad} in {list(values)}")
    if len(set(values)) != len(values):
        raise ValueError(f"the damping grid repeats values: {list(values)}")
    return values


def _split_indices(
    count: int, n_query: int, holdout_fraction: float, seed: int, split: Split
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((selection rows, report rows), (selection queries, report queries))``, each sorted."""
    if split not in ("subsets", "queries", "both"):
        raise ValueError(f"split must be 'subsets', 'queries' or 'both', got {split!r}")
    check_open_unit("holdout_fraction", holdout_fraction)
    rng = np.random.default_rng(seed)
    rows = (np.arange(count),) * 2
    queries = (np.arange(n_query),) * 2
    if split in ("subsets", "both"):
        rows = _halves(rng, count, holdout_fraction, _MIN_SUBSETS, "subsets")
    if split in ("queries", "both"):
        queries = _halves(rng, n_query, holdout_fraction, 1, "queries")
    return rows, queries


def _halves(
    rng: np.random.Generator, size: int, holdout_fraction: float, minimum: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    held_out = round(holdout_fraction * size)
    if min(held_out, size - held_out) < minimum:
        raise ValueError(
            f"cannot split {size} {what} into parts of at least {minimum} with "
            f"holdout_fraction={holdout_fraction} ({size - held_out} select, {held_out} report)"
        )
    order = rng.permutation(size)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _as_array(scores: np.ndarray | torch.Tensor, n_query: int, damping: float) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().to(torch.float64).numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != n_query:
        raise ValueError(
            f"score_with({damping:g}) returned shape {scores.shape}; the outputs call for "
            f"[{n_query}, n_train]"
        )
    return scores
