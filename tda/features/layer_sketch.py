r"""Pure math of :class:`~tda.features.kronecker.KroneckerFeaturizer`'s per-layer sketches.

A Linear layer's per-sample gradient is :math:`G = \sum_t g_t a_t^\top` (``[o, c]``). Both
structures first sketch each side, :math:`B^\top g_t` and :math:`A^\top a_t`, then combine them:
the Kronecker structure by an outer product (features :math:`B^\top G A`), the Khatri-Rao
structure column by column (features :math:`\phi_j = b_j^\top G a_j`).
"""

from __future__ import annotations

import math

from torch import Tensor


def kronecker_sizes(dim: int, shapes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(k_out, k_in)`` per layer of gradient shape ``(out, c)``.

    With ``s = out * c`` and ``S`` the sum of ``s``, a layer gets
    ``share = clamp(round(dim * s / S), 1, s)``, ``k_out = clamp(round(sqrt(share * out / c)), 1,
    out)`` (so ``k_out / k_in ~ out / c``) and ``k_in = clamp(round(share / k_out), 1, c)``.
    """
    total = sum(out * columns for out, columns in shapes)
    sizes = []
    for out, columns in shapes:
        share = min(out * columns, max(1, round(dim * out * columns / total)))
        k_out = min(out, max(1, round(math.sqrt(share * out / columns))))
        sizes.append((k_out, min(columns, max(1, round(share / k_out)))))
    return sizes


def proportional_shares(dim: int, weights: list[int]) -> list[int]:
    """Split ``dim`` into one share per weight: each at least 1, proportional, summing to ``dim``.

    Every share starts at 1; the remaining ``dim - len(weights)`` are split by the largest
    remainder method: ``floor(rest * w / W)`` each, then one more to the largest remainders (ties
    to the earlier weight). Integer arithmetic throughout, so the split is deterministic.

    Raises:
        ValueError: ``dim`` is smaller than the number of weights, or a weight is not positive.
    """
    if dim < len(weights):
        raise ValueError(
            f"dim={dim} is smaller than the {len(weights)} chosen layers; each needs a feature"
        )
    if any(weight < 1 for weight in weights):
        raise ValueError(f"weights must be positive, got {weights}")
    rest, total = dim - len(weights), sum(weights)
    shares = [1 + rest * weight // total for weight in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: -(rest * weights[i] % total))
    for index in by_remainder[: dim - sum(shares)]:
        shares[index] += 1
    return shares


def kronecker_block(sketched_out: Tensor, sketched_in: Tensor) -> Tensor:
    r""":math:`\sum_t (B^\top g_t)(A^\top a_t)^\top`, flattened row-major.

    Args:
        sketched_out: :math:`B^\top g_t` for every example and position, ``[b, T, k_out]``.
        sketched_in: :math:`A^\top a_t`, ``[b, T, k_in]``.

    Returns:
        ``[b, k_out * k_in]``.
    """
    return (sketched_out.transpose(1, 2) @ sketched_in).reshape(len(sketched_in), -1)


def khatri_rao_block(sketched_out: Tensor, sketched_in: Tensor) -> Tensor:
    r""":math:`\phi_j = \sum_t (b_j^\top g_t)(a_j^\top a_t)`, i.e. :math:`b_j^\top G a_j`.

    Args:
        sketched_out: :math:`B^\top g_t`, ``[b, T, k]``.
        sketched_in: :math:`A^\top a_t`, ``[b, T, k]``.

    Returns:
        ``[b, k]``.
    """
    return (sketched_out * sketched_in).sum(dim=1)
