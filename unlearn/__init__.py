"""unlearn: remove training examples from PyTorch models, with the evidence and the record.

Exact retraining removes them; the approximate methods are measured, not proven: each result's
metrics (UA / RA / TA / MIA, before and after) are evidence, best read beside retrained oracles
(:mod:`unlearn.benchmark`, :mod:`unlearn.klom`).

A validated :class:`UnlearningRequest` names the examples to forget; an :class:`Unlearner` runs
one method (exact retraining, FT, GA, RL, GradDiff, NPO, SalUn, WAGLE, ℓ1-sparse, prune first
then unlearn, datamodel matching) through one hard-masked training loop on a copy of the model and
returns an :class:`UnlearningResult` with metrics, timings and an audit record.
:mod:`unlearn.benchmark`, :mod:`unlearn.klom` and :mod:`unlearn.tuning` measure unlearners against
retrained oracles.
"""

from unlearn.audit import AuditRecord, append_audit, read_audit_log
from unlearn.benchmark import (
    UnlearnedGroup,
    benchmark,
    gap_report,
    interval,
    klom_report,
    mean_metrics,
    metrics_of,
    unlearn_each,
    unlearn_each_stable,
    untouched_report,
)
from unlearn.ensembles import OracleGroup, load_or_train, load_or_train_oracles, oracle_directory
from unlearn.forget_quality import (
    answer_probabilities,
    forget_quality,
    model_utility,
    truth_ratios,
)
from unlearn.forget_sets import (
    ClassForgetSet,
    ForgetSet,
    IndexForgetSet,
    RandomForgetSet,
    forget_request,
)
from unlearn.gradients import summed_gradient
from unlearn.journal import SearchJournal
from unlearn.klom import (
    klom,
    klom_by_split,
    klom_floor,
    klom_interval,
    klom_per_point,
    margins_of,
)
from unlearn.loop import LoopConfig, Phase, Progress, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask, check_mask, intersect_masks
from unlearn.methods import (
    WAGLE,
    DatamodelMatching,
    DecayingL1Loss,
    ExactRetraining,
    FineTune,
    ForgetSplit,
    GradientAscent,
    GradientDifference,
    L1Sparse,
    NegativePreferenceOptimization,
    NPOLoss,
    PruneThenUnlearn,
    RandomLabels,
    SalUn,
    UnlearningMethod,
    random_other_labels,
)
from unlearn.metrics import (
    accuracy_percent,
    average_gap,
    mia_efficacy,
    true_label_probability,
    unlearning_metrics,
)
from unlearn.predictors import (
    DatamodelPredictor,
    HeadDifferencePredictor,
    HeadRefitPredictor,
    OraclePredictor,
    OutputPredictor,
    PredictorScope,
    ScoresPredictor,
    TRAKPredictor,
    architecture,
    calibrate_on_proxy,
    datamodel_predictor,
    load_scores_predictor,
    trak_predictor,
)
from unlearn.pruning import (
    MagnitudePruning,
    apply_mask,
    magnitude_mask,
    mask_sparsity,
    prunable_parameters,
)
from unlearn.request import UnlearningRequest
from unlearn.result import UnlearningResult
from unlearn.saliency import saliency_mask, top_fraction_mask
from unlearn.tuning import Selection, select_on_proxy, tune_on_proxy
from unlearn.unlearner import Unlearner
from unlearn.weight_attribution import weight_attribution, weight_attribution_mask

__all__ = [
    "WAGLE",
    "AuditRecord",
    "ClassForgetSet",
    "DatamodelMatching",
    "DatamodelPredictor",
    "DecayingL1Loss",
    "ExactRetraining",
    "FineTune",
    "ForgetSet",
    "ForgetSplit",
    "GradientAscent",
    "GradientDifference",
    "HeadDifferencePredictor",
    "HeadRefitPredictor",
    "IndexForgetSet",
    "L1Sparse",
    "LoopConfig",
    "MagnitudePruning",
    "Mask",
    "NPOLoss",
    "NegativePreferenceOptimization",
    "OracleGroup",
    "OraclePredictor",
    "OutputPredictor",
    "Phase",
    "PredictorScope",
    "Progress",
    "PruneThenUnlearn",
    "RandomForgetSet",
    "RandomLabels",
    "SalUn",
    "ScoresPredictor",
    "SearchJournal",
    "Selection",
    "TRAKPredictor",
    "UnlearnedGroup",
    "Unlearner",
    "UnlearningMethod",
    "UnlearningRequest",
    "UnlearningResult",
    "WeightedLoss",
    "accuracy_percent",
    "answer_probabilities",
    "append_audit",
    "apply_mask",
    "architecture",
    "average_gap",
    "benchmark",
    "calibrate_on_proxy",
    "check_mask",
    "datamodel_predictor",
    "forget_quality",
    "forget_request",
    "gap_report",
    "intersect_masks",
    "interval",
    "klom",
    "klom_by_split",
    "klom_floor",
    "klom_interval",
    "klom_per_point",
    "klom_report",
    "load_or_train",
    "load_or_train_oracles",
    "load_scores_predictor",
    "magnitude_mask",
    "margins_of",
    "mask_sparsity",
    "mean_metrics",
    "metrics_of",
    "mia_efficacy",
    "model_utility",
    "oracle_directory",
    "prunable_parameters",
    "random_other_labels",
    "read_audit_log",
    "saliency_mask",
    "select_on_proxy",
    "summed_gradient",
    "top_fraction_mask",
    "trak_predictor",
    "true_label_probability",
    "truth_ratios",
    "tune_on_proxy",
    "unlearn_each",
    "unlearn_each_stable",
    "unlearning_loop",
    "unlearning_metrics",
    "untouched_report",
    "weight_attribution",
    "weight_attribution_mask",
]
