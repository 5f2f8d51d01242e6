r"""TRAK's damped feature kernel :math:`A = \Phi^\top W\Phi + \lambda I`, applied as :math:`A^{-1}`.

:math:`\Phi \in R^{n\times k}` holds a checkpoint's training features, :math:`W` optional row
weights (the Gauss-Newton curvature) and :math:`\lambda = \text{damping}\cdot\operatorname{tr}
(\Phi^\top W\Phi)/k`. Two exact forms, chosen by shape:

- **primal** (:math:`k \le n`): the :math:`k\times k` inverse by Cholesky, the kernel accumulated
  shard by shard (memory :math:`k^2`);
- **dual** (:math:`k > n`): with :math:`U = W^{1/2}\Phi`, Woodbury gives
  :math:`A^{-1}v = (v - U^\top(UU^\top + \lambda I_n)^{-1}Uv)/\lambda`, an :math:`n\times n`
  factorisation (memory :math:`nk`, less than :math:`k^2`; time :math:`n^2k` instead of
  :math:`k^3`). A projection wider than the training set, e.g. :math:`k = 16384` features of
  1000 examples, is where it pays.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tda.methods.base import train_gram
from tda.store import FeatureStore

SINGULAR = (
    "the feature kernel ΦᵀΦ is singular (more projection dimensions than informative "
    "training examples?); use damping > 0 or a smaller projection"
)


def damped_inverse(gram: Tensor, damping: float) -> Tensor:
    r""":math:`(G + \lambda I)^{-1}` by Cholesky, :math:`\lambda` relative to the mean diagonal.

    Raises:
        ValueError: the damped matrix is not positive definite (e.g. ``k > n`` with no damping).
    """
    size = gram.shape[0]
    shift = damping * float(torch.diagonal(gram).mean())
    factor, info = torch.linalg.cholesky_ex(gram + shift * torch.eye(size, dtype=gram.dtype))
    if int(info) != 0:
        raise ValueError(SINGULAR)
    return torch.cholesky_inverse(factor)


@dataclass(frozen=True)
class DampedKernel:
    r""":math:`A^{-1}` of one checkpoint, in the primal (``inverse``) or the dual form.

    Attributes:
        inverse: :math:`A^{-1}` ``[k, k]`` (primal), or ``None``.
        rows: :math:`U` ``[n, k]`` (dual), or ``None``.
        factor: Cholesky factor of :math:`UU^\top + \lambda I_n` (dual), or ``None``.
        shift: :math:`\lambda` (dual; 0 in the primal form, whose inverse holds it).
    """

    inverse: Tensor | None
    rows: Tensor | None
    factor: Tensor | None
    shift: float

    @classmethod
    def fit(
        cls,
        store: FeatureStore,
        checkpoint_id: str,
        split: str,
        weights: Tensor | None,
        damping: float,
        *,
        dual: bool | None = None,
    ) -> DampedKernel:
        """The kernel of ``(checkpoint_id, split)``; ``dual=None`` picks the dual when ``k > n``.

        Raises:
            ValueError: the damped kernel is singular (no damping and ``k > n``).
        """
        if dual is None:
            shard = store.shards(checkpoint_id, split)[0]
            dual = shard.arrays["features"][0][1] > store.splits()[split]
        if not dual:
            gram = train_gram(store, checkpoint_id, split, weights)
            return cls(damped_inverse(gram, damping), None, None, 0.0)
        rows = torch.from_numpy(store.load(checkpoint_id, split)).double()
        if weights is not None:
            rows = rows * weights.sqrt()[:, None]
        shift = damping * float(rows.square().sum()) / rows.shape[1]
        inner = rows @ rows.T + shift * torch.eye(len(rows), dtype=rows.dtype)
        factor, info = torch.linalg.cholesky_ex(inner)
        if shift <= 0 or int(info) != 0:
            raise ValueError(SINGULAR)
        return cls(None, rows, factor, shift)

    def solve(self, right: Tensor) -> Tensor:
        """:math:`A^{-1}` ``right`` for ``right`` ``[k]`` or ``[k, m]``."""
        if self.inverse is not None:
            return self.inverse @ right
        if right.dim() == 1:
            return self.solve(right[:, None])[:, 0]
        inner = torch.cholesky_solve(self.rows @ right, self.factor)
        return (right - self.rows.T @ inner) / self.shift

    def solve_rows(self, left: Tensor) -> Tensor:
        """``left`` :math:`A^{-1}` for ``left`` ``[..., k]`` (:math:`A` is symmetric)."""
        if self.inverse is not None:
            return left @ self.inverse
        flat = left.reshape(-1, left.shape[-1])
        return self.solve(flat.T).T.reshape(left.shape)
