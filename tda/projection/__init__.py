"""Seeded random projections ``[batch, p] -> [batch, k]`` for gradient features (TRAK's P)."""

from tda.projection.base import Projector, derive_seed
from tda.projection.dense import DenseKind, DenseProjector
from tda.projection.identity import IdentityProjector
from tda.projection.sparse import SparseProjector

__all__ = [
    "DenseKind",
    "DenseProjector",
    "IdentityProjector",
    "Projector",
    "SparseProjector",
    "derive_seed",
]
