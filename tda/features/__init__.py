"""Per-example features for attribution: projected gradients, written to a FeatureStore."""

from tda.features.featurize import (
    Featurizer,
    featurize,
    open_feature_store,
    shard_count,
    store_config,
)
from tda.features.gradient import FeatureBatch, GradientFeaturizer, out_to_loss
from tda.features.kronecker import KroneckerFeaturizer
from tda.features.logits import LogitFeaturizer, logit_split

__all__ = [
    "FeatureBatch",
    "Featurizer",
    "GradientFeaturizer",
    "KroneckerFeaturizer",
    "LogitFeaturizer",
    "featurize",
    "logit_split",
    "open_feature_store",
    "out_to_loss",
    "shard_count",
    "store_config",
]
