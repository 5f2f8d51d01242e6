r"""KLOM: KL divergence of margins between unlearned models and oracles (Georgiev et al. 2024).

Train :math:`N` originals and :math:`N` oracles (retrained on :math:`R`), run the unlearner on
every original, and for each point :math:`x` compare the distribution over models of the margin
:math:`f(x;\theta) = \text{logit}_y - \log\sum_{k\ne y}\exp\text{logit}_k`:

1. clip every margin to :math:`[-c, c]` (:math:`c = 100`);
2. split the joint range :math:`[\min, \max]` of both groups' margins at :math:`x` into :math:`B`
   equal-width bins (:math:`B = 20`; the last bin includes its right edge; a zero-width range puts
   every margin in the first bin);
3. turn each group's counts into frequencies, floor them at :math:`\varepsilon` and renormalise:
   :math:`p_b = \max(n^U_b/N, \varepsilon) / Z_p`, :math:`q_b = \max(n^O_b/M, \varepsilon) / Z_q`;
4. :math:`\mathrm{KLOM}(x) = \mathrm{KL}(p \,\|\, q) = \sum_b p_b \log(p_b / q_b)`.

**Direction**: :math:`\mathrm{KL}(\text{unlearned} \,\|\, \text{oracle})`, the divergence of the
unlearned models' margin distribution from the oracles' (the first argument of every function
here is the group being judged, the second the reference). A method is summarised by the 95th
percentile of :math:`\mathrm{KLOM}(x)` over forget, retain and validation points separately; two
disjoint groups of oracles give the floor that sampling noise alone reaches.

**Caveat**: the bins span the joint range, so a few judged models far from the rest (a seed
whose unlearning collapsed) widen every bin; the other models and the oracles then share one or
two bins and the divergence falls, even below the oracle-vs-oracle floor (one model of 20 at
margin -60 against margins near 5: about a quarter of the floor; tested). A KLOM below the floor
is a sign to look at the spread of the unlearned models, not a better-than-exact unlearner.

:func:`klom_interval` puts a 95% bootstrap interval on that percentile by resampling the *points*
(not the models): how far it would move for another set of points of the same kind, e.g.
another random 1% draw. Model-to-model noise is what the floor shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from tda.data.examples import Examples, check_input_dtype
from tda.outputs import task_outputs
from tda.task import ClassificationTask, Task


def margins_of(
    models: Sequence[nn.Module], examples: Examples, *, task: Task | None = None
) -> np.ndarray:
    """Margins ``[N, n]`` (float64) of each model on each example, in evaluation mode.

    The examples are moved to each model's device but never cast to its dtype (the library's
    dtype policy, :func:`tda.data.examples.check_input_dtype`): a float32 model would score
    float64 data at float32 precision without saying so.

    Raises:
        ValueError: no model, or floating-point inputs of another dtype than a model's
            parameters (integer inputs, token ids, pass).
    """
    if not models:
        raise ValueError("margins_of needs at least one model")
    task = task if task is not None else ClassificationTask()
    for model in models:  # every model before any work
        check_input_dtype(model, examples.inputs)
    rows = []
    for model in models:
        data = examples.to(next(model.parameters()).device)
        rows.append(task_outputs(model, task, data).double().cpu().numpy())
    return np.stack(rows)


def _check(judged: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    judged, reference = np.asarray(judged, dtype=np.float64), np.asarray(reference, np.float64)
    for name, array in (("unlearned", judged), ("oracle", reference)):
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"{name} margins must have shape [models, points], got {array.shape}")
        if np.isnan(array).any():
            raise ValueError(f"{name} margins contain NaN")
    if judged.shape[1] != reference.shape[1]:
        raise ValueError(
            f"unlearned margins cover {judged.shape[1]} points but oracle margins "
            f"{reference.shape[1]}; both must be measured on the same points"
        )
    return judged, reference


def _frequencies(bins: np.ndarray, count: int, epsilon: float) -> np.ndarray:
    """Floored, renormalised histograms ``[n, B]`` from bin indices ``[models, n]``."""
    points = bins.shape[1]
    flat = (bins + count * np.arange(points)).ravel()
    counts = np.bincount(flat, minlength=points * count).reshape(points, count)
    floored = np.maximum(counts / bins.shape[0], epsilon)
    return floored / floored.sum(axis=1, keepdims=True)


def klom_per_point(
    unlearned: np.ndarray,
    oracle: np.ndarray,
    *,
    bins: int = 20,
    clip: float = 100.0,
    epsilon: float = 1e-5,
) -> np.ndarray:
    r""":math:`\mathrm{KL}(p_x \| q_x)` for every point (see the module docstring).

    Args:
        unlearned: margins ``[N, n]`` of the models being judged.
        oracle: margins ``[M, n]`` of the reference models, on the same points.
        bins: :math:`B`, equal-width bins over each point's joint range.
        clip: :math:`c`, margins are clipped to :math:`[-c, c]` first.
        epsilon: :math:`\varepsilon > 0`, the frequency floor that keeps the KL finite.

    Returns:
        ``[n]`` non-negative divergences (nats).

    Raises:
        ValueError: arrays that are not 2-D, differ in points, contain NaN, or bad settings.
    """
    if bins < 1 or clip <= 0 or not 0 < epsilon < 1 / bins:
        raise ValueError(
            f"need bins >= 1, clip > 0 and 0 < epsilon < 1/bins; got {bins}, {clip}, {epsilon}"
        )
    judged, reference = _check(unlearned, oracle)
    judged, reference = np.clip(judged, -clip, clip), np.clip(reference, -clip, clip)
    low = np.minimum(judged.min(axis=0), reference.min(axis=0))
    width = (np.maximum(judged.max(axis=0), reference.max(axis=0)) - low) / bins
    safe = np.where(width > 0, width, 1.0)

    def index(margins: np.ndarray) -> np.ndarray:
        raw = np.floor((margins - low) / safe).astype(np.int64)
        return np.where(width > 0, np.clip(raw, 0, bins - 1), 0)

    p = _frequencies(index(judged), bins, epsilon)
    q = _frequencies(index(reference), bins, epsilon)
    return np.sum(p * np.log(p / q), axis=1)


def klom(
    unlearned: np.ndarray, oracle: np.ndarray, *, percentile: float = 95.0, **settings
) -> float:
    """The ``percentile`` (default P95) of :func:`klom_per_point` over the points given."""
    return float(np.percentile(klom_per_point(unlearned, oracle, **settings), percentile))


def klom_interval(
    per_point: np.ndarray,
    *,
    percentile: float = 95.0,
    level: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ``percentile`` of ``per_point`` KLOM values.

    Each of ``resamples`` draws takes as many points as given, with replacement, and recomputes
    the percentile; the interval holds the central ``level`` of those values.

    Raises:
        ValueError: no points, NaN values, or bad settings.
    """
    values = np.asarray(per_point, dtype=np.float64).reshape(-1)
    if len(values) == 0 or np.isnan(values).any():
        raise ValueError(f"need at least one non-NaN KLOM value, got {len(values)} points")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"need 0 < level < 1 and resamples >= 1, got {level}, {resamples}")
    draws = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    estimates = np.percentile(values[draws], percentile, axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def klom_floor(
    oracles_a: np.ndarray, oracles_b: np.ndarray, *, percentile: float = 95.0, **settings
) -> float:
    """KLOM of one group of oracles against a disjoint one: what sampling noise alone gives.

    Compare it with :func:`klom` for the same group sizes (e.g. ``N`` unlearned against ``N``
    oracles and ``N`` oracles against ``N`` other oracles).
    """
    return klom(oracles_a, oracles_b, percentile=percentile, **settings)


def klom_by_split(
    unlearned: Mapping[str, np.ndarray],
    oracle: Mapping[str, np.ndarray],
    *,
    percentile: float = 95.0,
    **settings,
) -> dict[str, float]:
    """:func:`klom` for each named split (e.g. ``forget``, ``retain``, ``validation``)."""
    if set(unlearned) != set(oracle):
        raise ValueError(f"splits differ: {sorted(unlearned)} vs {sorted(oracle)}")
    return {
        name: klom(unlearned[name], oracle[name], percentile=percentile, **settings)
        for name in unlearned
    }
