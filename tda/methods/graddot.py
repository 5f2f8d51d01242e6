r"""Gradient-similarity baselines over the same features as TRAK.

Grad-dot: :math:`\tau(x)_i = \frac{1}{M}\sum_m Q_{m,i}\, \phi_m(x)^\top \phi_m(z_i)`, the
first-order change of :math:`f(x)` after one gradient step on :math:`z_i` (since
:math:`-\nabla\ell(z_i) = Q_i \nabla f(z_i)` for the margin). Grad-cos replaces the inner product by
the cosine of the two features (:math:`Q_i > 0` does not change the cosine, so it is left out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tda.methods.base import (
    mean_over_checkpoints,
    query_rows,
    resolve_checkpoints,
    score_dtype,
    train_product,
)
from tda.store import FeatureStore


@dataclass
class GradientSimilarity:
    """Grad-dot (``normalize=False``) or grad-cos (``normalize=True``) attributor."""

    normalize: bool = False
    store: FeatureStore | None = field(default=None, init=False, repr=False)
    checkpoints: list[str] = field(default_factory=list, init=False)
    split: str = field(default="train", init=False)
    _train_scale: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def fit(self, store: FeatureStore, *, split: str = "train", checkpoints=None):
        """Record per-example scales: ``Q_i`` (grad-dot) or ``1/‖φ_i‖`` (grad-cos).

        A fit that raises leaves the attributor as it was.
        """
        resolved = resolve_checkpoints(store, checkpoints)
        scales = {c: self._scale(store, split, c) for c in resolved}
        self.store, self.split, self.checkpoints = store, split, resolved
        self._train_scale = scales
        return self

    def _scale(self, store: FeatureStore, split: str, checkpoint_id: str) -> Tensor:
        if not self.normalize:
            return torch.from_numpy(store.load(checkpoint_id, split, "out_to_loss")).double()
        norms = torch.zeros(store.splits()[split], dtype=torch.float64)
        for start, block in store.iter_rows(checkpoint_id, split):
            norms[start : start + len(block)] = torch.from_numpy(block).double().norm(dim=1)
        return 1.0 / norms.clamp_min(torch.finfo(torch.float64).tiny)

    def score(self, split: str, *, indices: Sequence[int] | None = None) -> Tensor:
        """Scores ``[n_query, n_train]`` for the queries in ``split``: float64 for a store of
        float64 features, float32 otherwise (as TRAK)."""
        if self.store is None:
            raise RuntimeError("call fit(store) before score()")

        def one_checkpoint(checkpoint_id: str) -> Tensor:
            queries = query_rows(self.store, checkpoint_id, split, indices).double()
            if self.normalize:
                queries = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-300)
            products = train_product(self.store, checkpoint_id, self.split, queries)
            return products * self._train_scale[checkpoint_id]

        scores = mean_over_checkpoints(one_checkpoint, self.checkpoints)
        return scores.to(score_dtype(self.store, self.checkpoints[0], self.split))
