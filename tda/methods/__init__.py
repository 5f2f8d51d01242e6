"""Attribution methods. All share the sign convention in :mod:`tda.methods.base`."""

from tda.methods.base import Attributor, mean_over_checkpoints
from tda.methods.damped_kernel import DampedKernel, damped_inverse
from tda.methods.graddot import GradientSimilarity
from tda.methods.influence import InfluenceFunction
from tda.methods.runs import CheckpointAverage, RunAttributor, TrainingRun, attribute_runs
from tda.methods.source import EKFACEigenbasis, ExplicitEigenbasis, Source
from tda.methods.stages import TrainingStage
from tda.methods.tracin import TracIn
from tda.methods.trak import TRAK

__all__ = [
    "TRAK",
    "Attributor",
    "CheckpointAverage",
    "DampedKernel",
    "EKFACEigenbasis",
    "ExplicitEigenbasis",
    "GradientSimilarity",
    "InfluenceFunction",
    "RunAttributor",
    "Source",
    "TracIn",
    "TrainingRun",
    "TrainingStage",
    "attribute_runs",
    "damped_inverse",
    "mean_over_checkpoints",
]
