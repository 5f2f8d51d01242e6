"""Unlearning methods: exact retraining (the oracle), FT, GA, RL, GradDiff, NPO, SalUn, WAGLE,
ℓ1-sparse, prune first then unlearn, and datamodel matching (DMM / OM)."""

from unlearn.methods.base import ForgetSplit, UnlearningMethod
from unlearn.methods.dmm import DatamodelMatching, matching_set
from unlearn.methods.fine_tune import FineTune
from unlearn.methods.gradient_ascent import GradientAscent
from unlearn.methods.gradient_difference import GradientDifference
from unlearn.methods.l1_sparse import DecayingL1Loss, L1Sparse
from unlearn.methods.npo import NegativePreferenceOptimization, NPOLoss
from unlearn.methods.prune_then_unlearn import PruneThenUnlearn
from unlearn.methods.random_labels import RandomLabels, random_other_labels
from unlearn.methods.retrain import ExactRetraining
from unlearn.methods.salun import SalUn
from unlearn.methods.wagle import WAGLE

__all__ = [
    "WAGLE",
    "DatamodelMatching",
    "DecayingL1Loss",
    "ExactRetraining",
    "FineTune",
    "ForgetSplit",
    "GradientAscent",
    "GradientDifference",
    "L1Sparse",
    "NPOLoss",
    "NegativePreferenceOptimization",
    "PruneThenUnlearn",
    "RandomLabels",
    "SalUn",
    "UnlearningMethod",
    "matching_set",
    "random_other_labels",
]
