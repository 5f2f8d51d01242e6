"""Evaluation of attributions against retraining: LDS, damping chosen by data, counterfactuals."""

from tda.eval.counterfactual import RANDOM, QueryOutcomes, Removal, RemovalRetrainer, plan_removals
from tda.eval.counterfactual_store import CounterfactualStore
from tda.eval.counterfactual_summary import (
    CounterfactualComparison,
    CounterfactualRecord,
    CounterfactualResult,
    CounterfactualSummary,
    Estimate,
    counterfactual_result,
    counterfactual_retraining,
)
from tda.eval.damping import DampingChoice, select_damping
from tda.eval.lds import LDSResult, lds, noise_ceiling, predict_subset_outputs

__all__ = [
    "RANDOM",
    "CounterfactualComparison",
    "CounterfactualRecord",
    "CounterfactualResult",
    "CounterfactualStore",
    "CounterfactualSummary",
    "DampingChoice",
    "Estimate",
    "LDSResult",
    "QueryOutcomes",
    "Removal",
    "RemovalRetrainer",
    "counterfactual_result",
    "counterfactual_retraining",
    "lds",
    "noise_ceiling",
    "plan_removals",
    "predict_subset_outputs",
    "select_damping",
]
