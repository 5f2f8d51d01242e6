"""The identity projector: no projection at all, the correctness reference for every method."""

from __future__ import annotations

import dataclasses

import torch

from tda.arguments import check_positive_int
from tda.dtypes import compute_dtype
from tda.projection.base import (
    _check_features,
    _check_input_dim,
    _dataclass_config,
    check_seed,
)


@dataclasses.dataclass(frozen=True)
class IdentityProjector:
    """Returns the features unchanged (``k = p``), so projected methods reduce to their exact form.

    Args:
        seed: Unused by the map; kept so the identity satisfies the ``Projector`` contract and
            ``with_seed`` round-trips.
        input_dim: If given, ``project`` rejects features whose width ``p`` differs.
    """

    seed: int = 0
    input_dim: int | None = None

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.input_dim is not None:
            check_positive_int("input_dim", self.input_dim)

    def output_dim(self, input_dim: int) -> int:
        """``k = p``."""
        _check_input_dim(input_dim, self.input_dim)
        return input_dim

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Return ``features`` ``[batch, p]`` as they are.

        float32 and float64 inputs are returned as the very same tensor (no copy: do not modify the
        result in place if the input must stay intact); other dtypes are converted to float32.
        """
        _check_features(features, self.input_dim)
        return features.to(compute_dtype(features.dtype))

    def with_seed(self, seed: int) -> IdentityProjector:
        """Same configuration, another seed (the output does not depend on it)."""
        return dataclasses.replace(self, seed=seed)

    def config(self) -> dict:
        """``{"class": "IdentityProjector", "seed": ..., "input_dim": ...}``."""
        return _dataclass_config(self)
