r"""Linear datamodeling score (LDS; Park et al. 2023, "TRAK", Section 2.2) and its noise ceiling.

Score convention of the library: ``scores[q, i] > 0`` means training example ``i`` pushes the output
of query ``q`` up. The attribution's prediction for a model trained on subset :math:`S_j` is then
:math:`g_q(S_j) = \sum_{i \in S_j} \tau_{q,i}`, and the LDS of query ``q`` is the Spearman rank
correlation over the subsets ``j = 1..m`` between :math:`g_q(S_j)` and the measured output
:math:`f(x_q; \theta_{S_j})` (averaged over retraining seeds). The reported LDS is the mean over
queries, with a percentile-bootstrap confidence interval obtained by resampling queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from tda.arguments import check_open_unit

_MIN_SUBSETS = 3  # with two subsets every rank correlation is +-1
_CHUNK_ELEMENTS = 1 << 22  # bounds temporaries (float masks, bootstrap indices) in memory
# Predictions whose range is within this fraction of their magnitude are constant: summing a
# constant score row over equal-size subsets differs only by float64 rounding (~1e-14 relative).
_CONSTANT_TOLERANCE = 1e-12


@dataclass(frozen=True, eq=False)
class LDSResult:
    """An LDS (or noise ceiling) with its bootstrap confidence interval.

    Attributes:
        mean: Mean rank correlation over the queries whose correlation is defined.
        ci_low: Lower end of the percentile-bootstrap confidence interval of ``mean``.
        ci_high: Upper end of that interval.
        per_query: Correlation of each query ``[n_queries]``; NaN for excluded queries.
        confidence: Confidence level of the interval, e.g. 0.95.
        n_subsets: Number ``m`` of subsets (retrained models per seed).
        n_queries: Number of queries given, excluded ones included.
        n_seeds: Retraining seeds per subset that the measured outputs average over.
        n_excluded: Queries left out because their predictions (up to float rounding) or outputs
            are constant over the subsets, which leaves the rank correlation undefined.
        alpha: Fraction of the training set in each subset, when known.
        name: What is measured, for printing.
    """

    mean: float
    ci_low: float
    ci_high: float
    per_query: np.ndarray
    confidence: float
    n_subsets: int
    n_queries: int
    n_seeds: int
    n_excluded: int = 0
    alpha: float | None = None
    name: str = "LDS"

    def __str__(self) -> str:
        seeds = f"{self.n_seeds} seed" + ("s" if self.n_seeds != 1 else "")
        details = [f"{self.n_queries} queries", f"{self.n_subsets} subsets", seeds]
        if self.alpha is not None:
            details.append(f"alpha {self.alpha:.2f}")
        if self.n_excluded:
            details.append(f"{self.n_excluded} constant queries excluded")
        level = f"{100 * self.confidence:g}%"
        return (
            f"{self.name} {self.mean:.3f} [{level} CI {self.ci_low:.3f}, {self.ci_high:.3f}] "
            f"({', '.join(details)})"
        )


def predict_subset_outputs(scores: np.ndarray | torch.Tensor, masks: np.ndarray) -> np.ndarray:
    r"""Linear-datamodel predictions :math:`g_q(S_j) = \sum_{i \in S_j} \tau_{q,i}`.

    Args:
        scores: Attribution scores ``[n_query, n_train]``.
        masks: Subset masks ``[count, n_train]`` (bool, or 0/1 values).

    Returns:
        float64 ``[count, n_query]``, i.e. ``masks @ scores.T``.
    """
    scores, masks = _as_scores(scores), _as_masks(masks)
    if scores.shape[1] != masks.shape[1]:
        raise ValueError(
            f"scores have shape {scores.shape} and masks {masks.shape}: both need one column per "
            "training example"
        )
    rows = max(1, _CHUNK_ELEMENTS // masks.shape[1])  # bound the float copy of the masks
    return np.concatenate(
        [
            masks[start : start + rows].astype(np.float64) @ scores.T
            for start in range(0, len(masks), rows)
        ]
    )


def lds(
    scores: np.ndarray | torch.Tensor,
    masks: np.ndarray,
    outputs: np.ndarray,
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> LDSResult:
    """Linear datamodeling score of attribution ``scores`` against retraining ground truth.

    Args:
        scores: Attribution scores ``[n_query, n_train]`` (numpy or torch), finite.
        masks: Subset masks ``[count, n_train]``.
        outputs: Measured outputs ``[count, n_query]``, or ``[count, n_seeds, n_query]`` which is
            averaged over seeds first (e.g. ``GroundTruthStore.outputs()``).
        confidence: Confidence level of the bootstrap interval.
        n_bootstrap: Number of bootstrap resamples of the queries.
        seed: Seed of the bootstrap.

    Returns:
        The mean Spearman correlation over queries, with its confidence interval.

    Raises:
        ValueError: On inconsistent shapes, non-finite inputs, fewer than 3 subsets, or when the
            correlation is undefined for every query.
    """
    measured, n_seeds = _seed_mean(outputs)
    predicted = predict_subset_outputs(scores, masks)
    if measured.shape != predicted.shape:
        raise ValueError(
            f"outputs have shape {np.shape(outputs)} but scores {tuple(np.shape(scores))} and "
            f"masks {np.shape(masks)} call for [count, (n_seeds,) n_query] = {predicted.shape}"
        )
    per_query = _spearman_columns(predicted, measured)
    per_query[_constant_columns(predicted)] = np.nan
    return _summarise(
        per_query,
        confidence,
        n_bootstrap,
        seed,
        n_subsets=predicted.shape[0],
        n_seeds=n_seeds,
        alpha=float(np.mean(_as_masks(masks))),
    )


def noise_ceiling(
    outputs: np.ndarray, *, confidence: float = 0.95, n_bootstrap: int = 1000, seed: int = 0
) -> LDSResult:
    """How well one retraining seed's outputs agree with the mean of the other seeds.

    For each seed ``s`` and query ``q``: the Spearman correlation over subsets between
    ``outputs[:, s, q]`` and the mean of ``outputs[:, t, q]`` over ``t != s``; averaged over seeds
    per query, then over queries with a bootstrap interval. It bounds what an LDS measured against
    single-seed outputs can reach; a query is excluded if any of its correlations is undefined.

    Args:
        outputs: Measured outputs ``[count, n_seeds, n_query]`` with ``n_seeds >= 2``.
        confidence: Confidence level of the bootstrap interval.
        n_bootstrap: Number of bootstrap resamples of the queries.
        seed: Seed of the bootstrap.
    """
    outputs = _as_outputs(outputs)
    if outputs.ndim != 3 or outputs.shape[1] < 2:
        raise ValueError(
            f"noise_ceiling needs outputs [count, n_seeds, n_query] with at least 2 seeds, "
            f"got shape {outputs.shape}"
        )
    n_seeds = outputs.shape[1]
    per_seed = [
        _spearman_columns(outputs[:, s], np.delete(outputs, s, axis=1).mean(axis=1))
        for s in range(n_seeds)
    ]
    per_query = np.mean(per_seed, axis=0)  # NaN propagates: any undefined seed excludes the query
    return _summarise(
        per_query,
        confidence,
        n_bootstrap,
        seed,
        n_subsets=outputs.shape[0],
        n_seeds=n_seeds,
        name="Noise ceiling",
    )


def _spearman_columns(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching columns of two ``[m, q]`` arrays; NaN where one is constant.

    Ties get average ranks; the correlation is then Pearson's between the rank columns.
    """
    ranks_first = rankdata(first, axis=0, method="average")
    ranks_second = rankdata(second, axis=0, method="average")
    ranks_first -= ranks_first.mean(axis=0)
    ranks_second -= ranks_second.mean(axis=0)
    covariance = (ranks_first * ranks_second).sum(axis=0)
    scale = np.sqrt((ranks_first**2).sum(axis=0) * (ranks_second**2).sum(axis=0))
    correlation = np.full(covariance.shape, np.nan)
    defined = scale > 0
    correlation[defined] = covariance[defined] / scale[defined]
    return np.clip(correlation, -1.0, 1.0)


def _constant_columns(values: np.ndarray) -> np.ndarray:
    """Columns of ``[m, q]`` values that are constant up to rounding: bool ``[q]``."""
    return np.ptp(values, axis=0) <= _CONSTANT_TOLERANCE * np.abs(values).max(axis=0)


def _summarise(
    per_query: np.ndarray,
    confidence: float,
    n_bootstrap: int,
    seed: int,
    **details: object,
) -> LDSResult:
    """Mean over defined queries with a percentile-bootstrap interval (queries resampled)."""
    check_open_unit("confidence", confidence)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be positive, got {n_bootstrap}")
    if per_query.size == 0:
        raise ValueError("there are no queries: scores and outputs need at least one")
    defined = per_query[~np.isnan(per_query)]
    if defined.size == 0:
        raise ValueError(
            f"the rank correlation is undefined for all {per_query.size} queries: predictions or "
            "outputs are constant over the subsets"
        )
    low, high = _bootstrap_interval(defined, confidence, n_bootstrap, seed)
    per_query.flags.writeable = False
    return LDSResult(
        mean=float(defined.mean()),
        ci_low=low,
        ci_high=high,
        per_query=per_query,
        confidence=confidence,
        n_queries=per_query.size,
        n_excluded=per_query.size - defined.size,
        **details,
    )


def _bootstrap_interval(
    values: np.ndarray, confidence: float, n_bootstrap: int, seed: int
) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` under resampling with replacement."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap)
    rows = max(1, _CHUNK_ELEMENTS // values.size)
    for start in range(0, n_bootstrap, rows):
        stop = min(start + rows, n_bootstrap)
        means[start:stop] = values[rng.integers(0, values.size, (stop - start, values.size))].mean(
            1
        )
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _as_scores(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().to(torch.float64).numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [n_query, n_train], got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite values")
    return scores


def _as_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 2 or 0 in masks.shape:
        raise ValueError(f"masks must be a non-empty 2-D [count, n_train], got shape {masks.shape}")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise ValueError("masks must be boolean or hold only 0 and 1")
    return masks.astype(bool, copy=False)


def _as_outputs(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim not in (2, 3):
        raise ValueError(
            "outputs must be [count, n_query] or [count, n_seeds, n_query], "
            f"got shape {outputs.shape}"
        )
    if not np.isfinite(outputs).all():
        raise ValueError(f"outputs hold {int((~np.isfinite(outputs)).sum())} non-finite values")
    if outputs.ndim == 3 and outputs.shape[1] == 0:
        raise ValueError(f"outputs of shape {outputs.shape} hold no retraining seed")
    if outputs.shape[0] < _MIN_SUBSETS:
        raise ValueError(
            f"need at least {_MIN_SUBSETS} subsets, got outputs of shape {outputs.shape}"
        )
    return outputs


def _seed_mean(outputs: np.ndarray) -> tuple[np.ndarray, int]:
    """Averages ``[count, n_seeds, n_query]`` over seeds; ``[count, n_query]`` is one seed."""
    outputs = _as_outputs(outputs)
    if outputs.ndim == 2:
        return outputs, 1
    return outputs.mean(axis=1), outputs.shape[1]
