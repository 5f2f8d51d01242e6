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
(queries resampled, as for the LDS); the comparison with random is paired by query and seed.

Runs are recorded in a :class:`CounterfactualStore`, one small file per (query, k, removal, seed)
plus one per full-data seed, each published atomically and never modified, so a killed run
resumes, and jobs of a Hydra multirun (over queries or seeds) can share one directory. This module
plans the runs and retrains; :mod:`tda.eval.counterfactual_summary` summarises them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral

import numpy as np
import torch

from tda.datamodels.retrain import MaskedTraining
from tda.outputs import logits_of
from tda.shards import check_name

RANDOM = "random"
"""Name of the control removal: ``k`` uniformly random training examples."""


@dataclass(frozen=True)
class QueryOutcomes:
    """One model on the whole query set: task outputs and arg-max classes, ``[n_query]`` each."""

    outputs: np.ndarray
    predictions: np.ndarray


Retrain = Callable[[np.ndarray, int], QueryOutcomes]
"""``retrain(keep, seed)``: train with ``seed`` on the examples where ``keep [n_train]`` is True."""


@dataclass(frozen=True)
class RemovalRetrainer(MaskedTraining):
    """Train on the kept examples with ``seed`` (fields: :class:`tda.datamodels.retrain.
    MaskedTraining`; ``queries`` is the whole query set: a removal reads its own query);
    return the queries' outputs and predictions."""

    def __call__(self, keep: np.ndarray, seed: int) -> QueryOutcomes:
        model = self.trained(keep, seed)
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
        method: Name of the attribution, other than ``"random"``: letters, digits, ``_``, ``-``
            and ``.``, not starting with ``.`` (:class:`CounterfactualStore` names a directory
            after it).
        random_seed: Seed of the random control.

    Returns:
        For every query, k and seed: the method's removal (the ``k`` highest scores, ties to the
        lower index), then the random one.

    Raises:
        ValueError: Scores that are not 2-D or hold non-finite values in a chosen row, queries,
            ks or seeds that are empty, repeated or out of range (seeds and ``random_seed``:
            ``[0, 2**64)``), or a bad method name.
        TypeError: Queries, ks, seeds or ``random_seed`` that are not integers.
    """
    if len(scores.shape) != 2:
        raise ValueError(f"scores must be 2-D [n_query, n_train], got shape {tuple(scores.shape)}")
    n_query, n_train = scores.shape
    queries, ks, seeds = _checked_plan(queries, ks, seeds, method, n_query, n_train)
    random_seed = _checked_random_seed(random_seed)
    plan = []
    for query in queries:
        row = _score_row(scores, query)
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


def _score_row(scores: np.ndarray | torch.Tensor, query: int) -> np.ndarray:
    """Row ``query`` of the scores as float64 numpy (torch rows of any dtype or device)."""
    row = scores[query]
    if isinstance(row, torch.Tensor):
        row = row.detach().to("cpu", torch.float64).numpy()
    return np.asarray(row, dtype=np.float64)


def _indices(array: np.ndarray) -> tuple[int, ...]:
    return tuple(int(index) for index in array)


def _checked_plan(queries, ks, seeds, method, n_query, n_train):
    """Validates the arguments of :func:`plan_removals`; returns them as lists of ints."""
    for name, values in (("queries", queries), ("ks", ks), ("seeds", seeds)):
        if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in values):
            raise TypeError(f"{name} must be integers, got {list(values)}")
    queries, ks, seeds = ([int(v) for v in values] for values in (queries, ks, seeds))
    check_name("method", method)  # the store's rule: a removal's directory is named after it
    if method == RANDOM:
        raise ValueError(f"method must be a name other than {RANDOM!r}, the control's")
    for name, values in (("queries", queries), ("ks", ks), ("seeds", seeds)):
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{name} must be non-empty and distinct, got {values}")
    if not all(0 <= query < n_query for query in queries):
        raise ValueError(f"queries {queries} must lie in [0, {n_query}) (rows of the scores)")
    if not all(1 <= k < n_train for k in ks):
        raise ValueError(
            f"every k in {ks} must lie in [1, {n_train}) for {n_train} training examples"
        )
    if not all(0 <= seed < 2**64 for seed in seeds):  # the range torch and numpy both seed from
        raise ValueError(f"seeds {seeds} must lie in [0, 2**64)")
    return queries, sorted(ks), seeds


def _checked_random_seed(random_seed) -> int:
    if not isinstance(random_seed, Integral) or isinstance(random_seed, bool):
        raise TypeError(f"random_seed must be an integer, got {random_seed!r}")
    if not 0 <= random_seed < 2**64:
        raise ValueError(f"random_seed must lie in [0, 2**64), got {random_seed}")
    return int(random_seed)
