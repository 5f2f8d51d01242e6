"""unlearn: remove training examples from PyTorch models and prove it.

A validated :class:`UnlearningRequest` names the examples to forget; an :class:`Unlearner` runs
one method (exact retraining, FT, GA, RL, GradDiff, SalUn, ℓ1-sparse) through one hard-masked
training loop on a copy of the model and returns an :class:`UnlearningResult` with metrics,
timings and an audit record.
"""

from unlearn.audit import AuditRecord, append_audit, read_audit_log
from unlearn.loop import LoopConfig, Phase, Progress, unlearning_loop
from unlearn.losses import WeightedLoss
from unlearn.masks import Mask, check_mask, intersect_masks
from unlearn.methods import (
    DecayingL1Loss,
    ExactRetraining,
    FineTune,
    ForgetSplit,
    GradientAscent,
    GradientDifference,
    L1Sparse,
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
from unlearn.request import UnlearningRequest
from unlearn.result import UnlearningResult
from unlearn.saliency import forget_gradient, saliency_mask, top_fraction_mask
from unlearn.unlearner import Unlearner

__all__ = [
    "AuditRecord",
    "DecayingL1Loss",
    "ExactRetraining",
    "FineTune",
    "ForgetSplit",
    "GradientAscent",
    "GradientDifference",
    "L1Sparse",
    "LoopConfig",
    "Mask",
    "Phase",
    "Progress",
    "RandomLabels",
    "SalUn",
    "Unlearner",
    "UnlearningMethod",
    "UnlearningRequest",
    "UnlearningResult",
    "WeightedLoss",
    "accuracy_percent",
    "append_audit",
    "average_gap",
    "check_mask",
    "forget_gradient",
    "intersect_masks",
    "mia_efficacy",
    "random_other_labels",
    "read_audit_log",
    "saliency_mask",
    "top_fraction_mask",
    "true_label_probability",
    "unlearning_loop",
    "unlearning_metrics",
]
