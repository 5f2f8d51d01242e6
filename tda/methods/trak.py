r"""TRAK (Park et al. 2023, "TRAK: Attributing Model Behavior at Scale", Eq. 2 and Alg. 1).

For M models with projected output-gradient features :math:`\Phi_m \in R^{n\times k}` (train) and
:math:`\phi_m(x)` (query) and out-to-loss weights :math:`Q_{m,i} = 1 - p_i`,

.. math:: \tau(x) = \Big(\frac{1}{M}\sum_m \phi_m(x)^\top (\Phi_m^\top\Phi_m + \lambda_m I)^{-1}
          \Phi_m^\top\Big) \operatorname{diag}(\bar Q), \qquad \bar Q = \frac{1}{M}\sum_m Q_m,

with :math:`\lambda_m = \text{damping} \cdot \operatorname{tr}(\Phi_m^\top\Phi_m)/k` (relative
damping, so one value works across models and projection sizes).
The damped kernel is solved by :class:`~tda.methods.damped_kernel.DampedKernel`: as a
:math:`k\times k` inverse, or in the equivalent :math:`n\times n` (dual) form when the
projection is wider than the training set (:math:`k > n`).

With ``gauss_newton=True`` the kernel is :math:`\Phi_m^\top W_m \Phi_m`,
:math:`W_m = \operatorname{diag}(Q_m(1-Q_m))` (:math:`= p(1-p)`, the curvature of the loss in the
output): the Gauss-Newton Hessian of the linearised model, the one-step Newton estimate of
removing examples, with each checkpoint's own :math:`Q_m` in place of :math:`\bar Q`:
:math:`\tau(x) = \frac1M\sum_m \phi_m(x)^\top(\Phi_m^\top W_m\Phi_m + \lambda_m I)^{-1}
\Phi_m^\top \operatorname{diag}(Q_m)`. TRAK drops :math:`W`, which preserves rankings but shrinks
effects by orders of magnitude on well-fit models (:math:`p(1-p)` is small); keep it when the size
of an effect matters, e.g. to predict retrained outputs for datamodel matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from tda.curvature.base import check_damping
from tda.indices import check_in_range, integer_positions
from tda.methods.base import (
    gather_rows,
    mean_over_checkpoints,
    query_rows,
    resolve_checkpoints,
    score_dtype,
    train_product,
)
from tda.methods.damped_kernel import DampedKernel
from tda.store import FeatureStore


@dataclass
class TRAK:
    """TRAK attributor over the checkpoints in a FeatureStore.

    Args:
        damping: relative ridge :math:`\\lambda` (fraction of the mean diagonal of ΦᵀΦ). The
            default 0.1 was chosen on a pilot MNIST-1D ground truth (40 subsets, one seed) that
            the benchmark does not reuse; 0 reproduces the reference ``traker`` package.
        gauss_newton: weight the kernel by the loss curvature (see the module docstring);
            classification features only (a store of another task is refused).
    """

    damping: float = 0.1
    gauss_newton: bool = False
    store: FeatureStore | None = field(default=None, init=False, repr=False)
    checkpoints: list[str] = field(default_factory=list, init=False)
    split: str = field(default="train", init=False)
    _kernels: dict[str, DampedKernel] = field(default_factory=dict, init=False, repr=False)
    _weights: Tensor | None = field(default=None, init=False, repr=False)
    _checkpoint_weights: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_damping(self.damping)

    def fit(self, store: FeatureStore, *, split: str = "train", checkpoints=None) -> TRAK:
        """Invert each checkpoint's damped feature kernel and average the out-to-loss weights.

        A fit that raises leaves the attributor as it was.
        """
        if self.gauss_newton:
            _check_curvature_task(store)
        resolved = resolve_checkpoints(store, checkpoints)
        weights = [store.load(c, split, "out_to_loss").astype(np.float64) for c in resolved]
        kernels = {
            c: DampedKernel.fit(store, c, split, self._curvature(q), self.damping)
            for c, q in zip(resolved, weights, strict=True)
        }
        self.store, self.split, self.checkpoints, self._kernels = store, split, resolved, kernels
        self._weights = torch.from_numpy(np.mean(weights, axis=0))
        self._checkpoint_weights = {
            c: torch.from_numpy(q) for c, q in zip(resolved, weights, strict=True)
        }
        return self

    def _inside(self, checkpoint_id: str) -> Tensor | None:
        """The out-to-loss weights applied per checkpoint (Gauss-Newton) or ``None``."""
        return self._checkpoint_weights[checkpoint_id] if self.gauss_newton else None

    def _outside(self) -> Tensor | float:
        """The weights applied to the ensemble mean (TRAK's :math:`\bar Q`) or 1."""
        return 1.0 if self.gauss_newton else self._weights

    def _curvature(self, out_to_loss: np.ndarray) -> Tensor | None:
        if not self.gauss_newton:
            return None
        q = torch.from_numpy(out_to_loss)
        return q * (1.0 - q)

    def score(self, split: str, *, indices: Sequence[int] | None = None) -> Tensor:
        """TRAK scores ``[n_query, n_train]`` for the queries in ``split``."""
        if self.store is None:
            raise RuntimeError("call fit(store) before score()")

        def one_checkpoint(checkpoint_id: str) -> Tensor:
            queries = query_rows(self.store, checkpoint_id, split, indices).double()
            solved = self._kernels[checkpoint_id].solve_rows(queries)
            scores = train_product(self.store, checkpoint_id, self.split, solved)
            inside = self._inside(checkpoint_id)
            return scores if inside is None else scores * inside

        scores = mean_over_checkpoints(one_checkpoint, self.checkpoints) * self._outside()
        return scores.to(score_dtype(self.store, self.checkpoints[0], self.split))

    def score_group(
        self,
        split: str,
        group: Sequence[int],
        *,
        indices: Sequence[int] | None = None,
        retain_kernel: bool = False,
    ) -> Tensor:
        r"""Summed scores :math:`\sum_{i \in G} \tau(x)_i` of the training examples in ``group``.

        Equal to ``score(split)[:, group].sum(-1)`` but never forms the ``[n_query, n_train]``
        matrix: per checkpoint it solves :math:`v = (\Phi^\top\Phi + \lambda I)^{-1}
        \Phi_G^\top \bar Q_G` once (the checkpoint's own kernel and :math:`Q` with
        ``gauss_newton``) and returns :math:`\phi(x)^\top v`. Query features may
        carry extra axes (``[q, C, k]`` per-class features give ``[q, C]``).

        With ``retain_kernel`` the kernel is that of the training set *without* the group,
        :math:`\Phi_R^\top W_R\Phi_R + \lambda I` (:math:`\lambda` still from the full kernel):
        the one-step Newton estimate of removing the group *together*. The plain sum charges every
        member's effect against the full set's curvature, so it cannot see that directions spanned
        only by the group (a whole class) lose their curvature with it; for one example it is
        the leave-one-out correction :math:`\tau(x)_i / (1 - w_i\,\phi_i^\top A^{-1}\phi_i)`.
        Computed from the fitted inverse :math:`A^{-1}` by the Woodbury identity
        (:math:`O(|G|k^2 + |G|^3)` per checkpoint).

        Raises:
            ValueError: a group index outside the training split, indices that are not integers
                (a boolean mask), or a repeated index with ``retain_kernel`` (an example can be
                removed once).
        """
        if self.store is None:
            raise RuntimeError("call fit(store) before score_group()")
        columns = _group_columns(group, self.store.splits()[self.split], self.split)
        if retain_kernel and len(np.unique(columns)) != len(columns):
            raise ValueError("the group repeats a training example; each can be removed once")

        def one_checkpoint(checkpoint_id: str) -> Tensor:
            blocks = self.store.iter_rows(checkpoint_id, self.split)
            train = torch.from_numpy(gather_rows(blocks, columns)).double()  # the group's rows
            inside = self._inside(checkpoint_id)
            weights = (self._weights if inside is None else inside)[columns]
            kernel = self._kernels[checkpoint_id]
            direction = kernel.solve(train.T @ weights)
            if retain_kernel:
                own = self._checkpoint_weights[checkpoint_id].numpy()[columns]
                curvature = self._curvature(own)  # the group's rows only
                rows = train if curvature is None else train * curvature[:, None].sqrt()
                direction = _downdated_solve(kernel, rows, direction)
            return query_rows(self.store, checkpoint_id, split, indices).double() @ direction

        summed = mean_over_checkpoints(one_checkpoint, self.checkpoints)
        return summed.to(score_dtype(self.store, self.checkpoints[0], self.split))


def _downdated_solve(kernel: DampedKernel, rows: Tensor, solved: Tensor) -> Tensor:
    r""":math:`(A - B^\top B)^{-1} b` from :math:`A^{-1}` (``kernel``), :math:`B` = ``rows`` and
    :math:`A^{-1}b` = ``solved``, by Woodbury:
    :math:`A^{-1}b + A^{-1}B^\top (I - BA^{-1}B^\top)^{-1} B A^{-1} b`."""
    spread = kernel.solve(rows.T)
    inner = torch.eye(len(rows), dtype=rows.dtype) - rows @ spread
    return solved + spread @ torch.linalg.solve(inner, rows @ solved)


def _group_columns(group: Sequence[int], n_train: int, split: str) -> np.ndarray:
    columns = integer_positions(group, "group indices").reshape(-1)
    check_in_range(columns, n_train, "group index", f"training split '{split}'")
    return columns


def _check_curvature_task(store: FeatureStore) -> None:
    """``Q(1 - Q)`` is the loss curvature in the output only for classification (``Q = 1 - p``);
    a language model's token-mean NLL is linear in its output (``Q = 1/T_c``)."""
    task = store.config.get("task")
    if task is not None and task != "ClassificationTask":
        raise ValueError(
            f"gauss_newton=True weights the kernel by p(1 - p), the cross-entropy's curvature in "
            f"the margin; the store's features are of task {task}, whose Q(1 - Q) is no "
            "curvature: use gauss_newton=False"
        )
