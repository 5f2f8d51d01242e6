"""tda: training-data attribution for PyTorch.

One kernel (per-sample gradients with ``torch.func`` + random projection -> on-disk FeatureStore)
serves every attribution method. Scores follow one sign convention: ``scores[q, i] > 0`` means
training example ``i`` pushes the output of query ``q`` up (removing it would lower that output).
"""

from tda.checkpoints import Checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from tda.curvature import (
    ConjugateGradientSolver,
    DiagonalSolver,
    EKFACSolver,
    ExplicitSolver,
    IdentitySolver,
    KFACSolver,
    LiSSASolver,
    SolverDivergedError,
)
from tda.data import (
    DataSplits,
    Examples,
    FactSet,
    as_examples,
    load_digits,
    load_mnist1d,
    load_python_source,
    make_facts,
)
from tda.datamodels import GroundTruthStore, SubsetRetrainer, sample_subsets
from tda.device import on_device, resolve_device
from tda.ensemble import check_member, load_member, train_ensemble
from tda.eval import (
    CounterfactualStore,
    DampingChoice,
    LDSResult,
    RemovalRetrainer,
    counterfactual_retraining,
    lds,
    noise_ceiling,
    plan_removals,
    select_damping,
)
from tda.features import GradientFeaturizer, featurize, open_feature_store
from tda.grads import per_sample_gradients
from tda.methods import (
    TRAK,
    EKFACEigenbasis,
    ExplicitEigenbasis,
    GradientSimilarity,
    InfluenceFunction,
    Source,
    TracIn,
    TrainingStage,
)
from tda.models import MLP, CNN1d, LogisticRegression, build_model
from tda.ntk import (
    DegenerateKernelError,
    EmpiricalNTK,
    FaithfulnessReport,
    KernelLogisticRegression,
    KernelSVM,
    KernelTooLargeError,
    NTKSurrogate,
)
from tda.projection import DenseProjector, IdentityProjector, SparseProjector
from tda.store import FeatureStore, IncompleteStoreError, StoreMismatchError
from tda.task import ClassificationTask, LanguageModelingTask
from tda.training import TrainConfig, train
from tda.transformer import CausalTransformer
from tda.valuation import (
    Backdoor,
    checkpoint_loss,
    flip_labels,
    loss_gradient_norms,
    mislabel_detection,
    pruning_curve,
    self_scores,
    tracin_self_influence,
    valuation_report,
    values_from_scores,
)

__all__ = [
    "MLP",
    "TRAK",
    "Backdoor",
    "CNN1d",
    "CausalTransformer",
    "Checkpoint",
    "ClassificationTask",
    "ConjugateGradientSolver",
    "CounterfactualStore",
    "DampingChoice",
    "DataSplits",
    "DegenerateKernelError",
    "DenseProjector",
    "DiagonalSolver",
    "EKFACEigenbasis",
    "EKFACSolver",
    "EmpiricalNTK",
    "Examples",
    "ExplicitEigenbasis",
    "ExplicitSolver",
    "FactSet",
    "FaithfulnessReport",
    "FeatureStore",
    "GradientFeaturizer",
    "GradientSimilarity",
    "GroundTruthStore",
    "IdentityProjector",
    "IdentitySolver",
    "IncompleteStoreError",
    "InfluenceFunction",
    "KFACSolver",
    "KernelLogisticRegression",
    "KernelSVM",
    "KernelTooLargeError",
    "LDSResult",
    "LanguageModelingTask",
    "LiSSASolver",
    "LogisticRegression",
    "NTKSurrogate",
    "RemovalRetrainer",
    "SolverDivergedError",
    "Source",
    "SparseProjector",
    "StoreMismatchError",
    "SubsetRetrainer",
    "TracIn",
    "TrainConfig",
    "TrainingStage",
    "as_examples",
    "build_model",
    "check_member",
    "checkpoint_loss",
    "counterfactual_retraining",
    "featurize",
    "flip_labels",
    "lds",
    "list_checkpoints",
    "load_checkpoint",
    "load_digits",
    "load_member",
    "load_mnist1d",
    "load_python_source",
    "loss_gradient_norms",
    "make_facts",
    "mislabel_detection",
    "noise_ceiling",
    "on_device",
    "open_feature_store",
    "per_sample_gradients",
    "plan_removals",
    "pruning_curve",
    "resolve_device",
    "sample_subsets",
    "save_checkpoint",
    "select_damping",
    "self_scores",
    "tracin_self_influence",
    "train",
    "train_ensemble",
    "valuation_report",
    "values_from_scores",
]
