"""Datamodel ground truth: random training subsets and a resumable store of retrained outputs."""

from tda.datamodels.ground_truth import GroundTruthStore
from tda.datamodels.subsets import sample_subsets

__all__ = ["GroundTruthStore", "sample_subsets"]
