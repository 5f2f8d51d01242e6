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
from tda.ensemble import load_member, train_ensemble
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
    "values_from_scores",
    "valuation_report",
    "tracin_self_influence",
    "self_scores",
    "pruning_curve",
    "mislabel_detection",
    "Backdoor",
    "loss_gradient_norms",
    "flip_labels",
    "NTKSurrogate",
    "KernelTooLargeError",
    "KernelSVM",
    "KernelLogisticRegression",
    "FaithfulnessReport",
    "EmpiricalNTK",
    "DegenerateKernelError",
    "select_damping",
    "plan_removals",
    "counterfactual_retraining",
    "RemovalRetrainer",
    "DampingChoice",
    "CounterfactualStore",
    "EKFACEigenbasis",
    "ExplicitEigenbasis",
    "Source",
    "TrainingStage",
    "EKFACSolver",
    "KFACSolver",
    "TracIn",
    "InfluenceFunction",
    "SolverDivergedError",
    "LiSSASolver",
    "IdentitySolver",
    "ExplicitSolver",
    "DiagonalSolver",
    "ConjugateGradientSolver",
    "CNN1d",
    "Checkpoint",
    "ClassificationTask",
    "LanguageModelingTask",
    "CausalTransformer",
    "FactSet",
    "load_python_source",
    "make_facts",
    "DataSplits",
    "DenseProjector",
    "Examples",
    "FeatureStore",
    "GradientFeaturizer",
    "GradientSimilarity",
    "GroundTruthStore",
    "IdentityProjector",
    "IncompleteStoreError",
    "LDSResult",
    "LogisticRegression",
    "MLP",
    "SparseProjector",
    "StoreMismatchError",
    "SubsetRetrainer",
    "TRAK",
    "TrainConfig",
    "as_examples",
    "build_model",
    "featurize",
    "lds",
    "list_checkpoints",
    "load_checkpoint",
    "load_digits",
    "load_member",
    "load_mnist1d",
    "noise_ceiling",
    "on_device",
    "open_feature_store",
    "per_sample_gradients",
    "resolve_device",
    "sample_subsets",
    "save_checkpoint",
    "train",
    "train_ensemble",
]
