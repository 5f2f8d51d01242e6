"""Data valuation: per-example values, self-influence, mislabel and poison detection, pruning.

Works with any attributor's scores ``[n_query, n_train]`` (library sign convention: positive
helps the query's output) or with self-influence. ``valuation_report`` gives a one-call summary.
"""

from tda.ranking import TopExamples, top_examples
from tda.valuation.mislabel import MislabelReport, flip_labels, mislabel_detection
from tda.valuation.poisoning import Backdoor
from tda.valuation.pruning import PruningCurve, pruning_curve, removal_order, removed_count
from tda.valuation.report import ValuationReport, valuation_report
from tda.valuation.values import (
    checkpoint_loss,
    loss_gradient_norms,
    self_scores,
    tracin_self_influence,
    values_from_scores,
)

__all__ = [
    "Backdoor",
    "MislabelReport",
    "PruningCurve",
    "TopExamples",
    "ValuationReport",
    "checkpoint_loss",
    "flip_labels",
    "loss_gradient_norms",
    "mislabel_detection",
    "pruning_curve",
    "removal_order",
    "removed_count",
    "self_scores",
    "top_examples",
    "tracin_self_influence",
    "valuation_report",
    "values_from_scores",
]
