r"""Dense Johnson-Lindenstrauss projection by a seeded Rademacher or Gaussian matrix (TRAK Sec. 3).

The matrix :math:`P \in \mathbb{R}^{p \times k}` has i.i.d. entries :math:`\pm 1/\sqrt{k}`
(Rademacher) or :math:`\mathcal{N}(0, 1/k)` (Gaussian), so :math:`\mathbb{E}[P P^\top] = I_p` and
:math:`\mathbb{E}[\langle xP, yP \rangle] = \langle x, y \rangle`.

The matrix is defined block by block over input rows: rows
``[b * block_rows, (b + 1) * block_rows)`` come from a CPU ``torch.Generator`` seeded by a hash of
``(seed, b)``, always drawn in float64. The matrix for a given ``(seed, p)`` is therefore the same
whatever the batch size, chunking, device or input dtype (float32 uses the float64 matrix rounded
to float32).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch

from tda.arguments import check_positive_int
from tda.dtypes import compute_dtype
from tda.projection.base import (
    _check_features,
    _check_input_dim,
    _dataclass_config,
    check_seed,
    hash_to_int63,
    rademacher,
)

DenseKind = Literal["rademacher", "gaussian"]
_KINDS = ("rademacher", "gaussian")


@dataclasses.dataclass(frozen=True)
class DenseProjector:
    r"""Project ``[batch, p] -> [batch, dim]`` with a dense seeded JL matrix.

    If the matrix fits in ``max_cache_bytes`` (``p * dim`` times 4 bytes for float32 inputs, 8 for
    float64) it is built once per (input width, device, dtype), kept in a private cache and applied
    with one matmul. Otherwise it is streamed: each block of ``block_rows`` rows is regenerated on
    every call and ``x[:, block] @ P_block`` accumulated, so memory stays at one block. Both paths
    give the same result up to floating-point summation order.

    Args:
        dim: Output dimension ``k``.
        kind: ``"rademacher"`` (entries :math:`\pm 1/\sqrt{k}`) or ``"gaussian"``
            (:math:`\mathcal{N}(0, 1/k)`).
        seed: Seed of the matrix; use ``derive_seed`` for one projector per checkpoint.
        block_rows: Rows of ``P`` drawn per generator; part of the matrix's definition, so
            changing it changes the matrix.
        max_cache_bytes: Largest matrix kept in memory; above it the projection streams. Affects
            speed and memory only, not the matrix.
        input_dim: If given, ``project`` rejects features whose width ``p`` differs.
    """

    dim: int
    kind: DenseKind = "rademacher"
    seed: int = 0
    block_rows: int = 4096
    max_cache_bytes: int = dataclasses.field(default=512 * 2**20, metadata={"config": False})
    input_dim: int | None = None
    # (p, device, dtype) -> P [p, dim]; derived data, so it is excluded from eq, repr and pickles.
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_positive_int("dim", self.dim)
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        check_seed(self.seed)
        check_positive_int("block_rows", self.block_rows)
        if isinstance(self.max_cache_bytes, bool) or not isinstance(self.max_cache_bytes, int):
            raise ValueError(f"max_cache_bytes must be an int, got {self.max_cache_bytes!r}")
        if self.max_cache_bytes < 0:
            raise ValueError(f"max_cache_bytes must be >= 0, got {self.max_cache_bytes}")
        if self.input_dim is not None:
            check_positive_int("input_dim", self.input_dim)

    def output_dim(self, input_dim: int) -> int:
        """``k = dim``."""
        _check_input_dim(input_dim, self.input_dim)
        return self.dim

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Compute ``features @ P``.

        Args:
            features: ``[batch, p]``, any device; float64 stays float64, the rest runs in float32.

        Returns:
            ``[batch, dim]`` on the device of ``features``.
        """
        _check_features(features, self.input_dim)
        dtype = compute_dtype(features.dtype)
        x = features.to(dtype)
        p = x.shape[1]
        if p * self.dim * x.element_size() <= self.max_cache_bytes:
            return x @ self._cached_matrix(p, x.device, dtype)
        return self._project_streaming(x)

    def matrix(
        self,
        input_dim: int,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Materialise ``P`` ``[input_dim, dim]`` (a fresh tensor, not the cached one)."""
        _check_input_dim(input_dim, self.input_dim)
        matrix = torch.empty(input_dim, self.dim, dtype=dtype, device=device)
        for block, start in enumerate(range(0, input_dim, self.block_rows)):
            stop = min(start + self.block_rows, input_dim)
            matrix[start:stop].copy_(self._block(block, stop - start))
        return matrix

    def with_seed(self, seed: int) -> DenseProjector:
        """Same configuration, another seed (and an empty cache)."""
        return dataclasses.replace(self, seed=seed)

    def config(self) -> dict:
        """``{"class": "DenseProjector", "dim": ..., "kind": ..., "seed": ..., ...}``."""
        return _dataclass_config(self)

    def _block(self, block: int, rows: int) -> torch.Tensor:
        """Rows ``[block * block_rows, block * block_rows + rows)`` of ``P``, float64 on CPU."""
        seed = hash_to_int63("dense-block", self.seed, block)
        scale = 1.0 / math.sqrt(self.dim)
        if self.kind == "rademacher":
            return rademacher(rows, self.dim, seed).mul_(scale)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        return torch.randn(rows, self.dim, generator=generator, dtype=torch.float64).mul_(scale)

    def _cached_matrix(self, p: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (p, str(device), dtype)
        matrix = self._cache.get(key)
        if matrix is None:
            # A matrix made under inference_mode could not be used later in autograd: build a
            # normal tensor whatever the caller's mode.
            with torch.inference_mode(False), torch.no_grad():
                matrix = self.matrix(p, dtype=dtype, device=device)
            cached_bytes = sum(m.numel() * m.element_size() for m in self._cache.values())
            if cached_bytes + matrix.numel() * matrix.element_size() > self.max_cache_bytes:
                self._cache.clear()  # keep the total under the budget: drop older matrices
            self._cache[key] = matrix
        return matrix

    def _project_streaming(self, x: torch.Tensor) -> torch.Tensor:
        """Accumulate ``x[:, block] @ P_block`` block by block in ``x.dtype`` (float32 or 64)."""
        p = x.shape[1]
        out = torch.zeros(x.shape[0], self.dim, dtype=x.dtype, device=x.device)
        for block, start in enumerate(range(0, p, self.block_rows)):
            stop = min(start + self.block_rows, p)
            block_matrix = self._block(block, stop - start).to(device=x.device, dtype=x.dtype)
            out.addmm_(x[:, start:stop], block_matrix)
        return out

    def __getstate__(self) -> dict:
        # Pickles (joblib workers, copies) carry the settings, never the cached matrices.
        return {**self.__dict__, "_cache": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
