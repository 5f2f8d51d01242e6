"""Datamodel ground truth: random training subsets and a resumable store of retrained outputs."""

from tda.datamodels.ground_truth import GroundTruthStore
from tda.datamodels.retrain import SubsetRetrainer
from tda.datamodels.subsets import sample_subsets

__all__ = ["GroundTruthStore", "SubsetRetrainer", "sample_subsets"]
