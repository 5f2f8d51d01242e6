"""The Hydra config tree: every group option builds its object; overlays and launchers compose."""

import functools
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from tda.curvature import (
    ConjugateGradientSolver,
    DiagonalSolver,
    EKFACSolver,
    ExplicitSolver,
    IdentitySolver,
    KFACSolver,
    LiSSASolver,
    kronecker_parameters,
)
from tda.data import DataSplits
from tda.features import GradientFeaturizer
from tda.features.kronecker import KroneckerFeaturizer
from tda.methods import (
    TRAK,
    CheckpointAverage,
    EKFACEigenbasis,
    GradientSimilarity,
    InfluenceFunction,
    Source,
    TracIn,
)
from tda.models import MLP, CNN1d, LogisticRegression
from tda.projection import DenseProjector, IdentityProjector, SparseProjector
from tda.task import ClassificationTask, LanguageModelingTask
from tda.training import TrainConfig
from tda.transformer import CausalTransformer

CONF = Path(__file__).resolve().parents[2] / "conf"
PRIMARY = ("train", "featurize", "retrain", "score", "lds", "counterfactual")
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
# Influence-function attributor options -> the curvature solver they use.
SOLVERS = {
    "explicit": ExplicitSolver,
    "cg": ConjugateGradientSolver,
    "lissa": LiSSASolver,
    "kfac": KFACSolver,
    "ekfac": EKFACSolver,
    "diagonal": DiagonalSolver,
    "identity": IdentitySolver,
}
# Group option -> the type it builds (models: the type the partial factory builds).
BUILDS = {
    "data/mnist1d": DataSplits,
    "data/digits": DataSplits,
    "data/python_source": DataSplits,
    "model/mlp": MLP,
    "model/cnn1d": CNN1d,
    "model/logreg": LogisticRegression,
    "model/transformer": CausalTransformer,
    "task/classification": ClassificationTask,
    "task/language_modeling": LanguageModelingTask,
    "train/default": TrainConfig,
    "projector/dense": DenseProjector,
    "projector/sparse": SparseProjector,
    "projector/identity": IdentityProjector,
    "featurizer/gradient": GradientFeaturizer,
    "featurizer/kronecker": KroneckerFeaturizer,
    "attributor/trak": TRAK,
    "attributor/graddot": GradientSimilarity,
    "attributor/gradcos": GradientSimilarity,
    **{f"attributor/if_{solver}": InfluenceFunction for solver in SOLVERS},
    "attributor/if_ekfac_checkpoints": CheckpointAverage,
    "attributor/if_ekfac_linear": InfluenceFunction,
    "attributor/tracin": TracIn,
    "attributor/source": Source,
}
# What every experiment overlay must state (??? in common.yaml).
REQUIRED = {
    "experiment_name",
    "seeds",
    "queries",
    "projection_dim",
    "ground_truth.masks.count",
    "ground_truth.masks.alpha",
    "ground_truth.seeds",
}


def compose_config(primary: str = "train", overrides: tuple[str, ...] = ()) -> DictConfig:
    """Compose like ``@hydra.main`` does, so that ``${hydra:...}`` interpolations resolve."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(primary, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def job_missing_keys(cfg: DictConfig) -> set[str]:
    """Dotted keys of the ??? values the job sees (interpolations are not followed)."""
    job = OmegaConf.to_container(cfg, resolve=False)
    del job["hydra"]
    return set(_missing(job))


def _missing(node, prefix: str = ""):
    for key, value in node.items():
        if value == "???":
            yield prefix + key
        elif isinstance(value, dict):
            yield from _missing(value, f"{prefix}{key}.")


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    yield
    HydraConfig.instance().cfg = None


def test_every_group_option_is_covered():
    # unlearner/, forget/ and predictor/ are covered by test_unlearn_configs.py
    groups = {path.parent.name for path in CONF.glob("*/*.yaml")}
    groups -= {"experiment", "unlearner", "forget", "predictor"}
    on_disk = {f"{group}/{path.stem}" for group in groups for path in (CONF / group).glob("*.yaml")}
    assert on_disk == set(BUILDS)


@pytest.mark.parametrize("option", sorted(BUILDS))
def test_group_option_builds_its_type(option):
    group, name = option.split("/")
    # No experiment overlay: each option is built from its YAML and the library's defaults.
    cfg = compose_config("train", ("~experiment", "projection_dim=16", f"{group}={name}"))
    built = instantiate(cfg[group])
    if group == "model":
        assert isinstance(built, functools.partial)
        built = built()
    assert type(built) is BUILDS[option]


def test_group_options_carry_their_settings():
    cfg = compose_config("score", ("experiment=tiny", "attributor=gradcos"))
    assert instantiate(cfg.attributor).normalize is True
    cfg = compose_config("score", ("experiment=tiny", "attributor=graddot"))
    assert instantiate(cfg.attributor).normalize is False
    config = instantiate(compose_config("train", ("~experiment",)).train)
    assert (config.epochs, config.batch_size) == (30, 64)
    optimizer = config.optimizer([torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 3e-3


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_influence_options_use_their_solver_and_the_task(solver):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # if_lissa is deep enough for its damping and scale
        attributor = instantiate(
            compose_config("score", ("experiment=tiny", f"attributor=if_{solver}")).attributor
        )
    assert type(attributor.solver) is SOLVERS[solver]
    assert attributor.task == ClassificationTask()


def test_linear_ekfac_option_attributes_through_the_kronecker_layers():
    cfg = compose_config("score", ("experiment=python_lm", "attributor=if_ekfac_linear"))
    attributor = instantiate(cfg.attributor)
    assert type(attributor.solver) is EKFACSolver and attributor.task == LanguageModelingTask()
    model = instantiate(cfg.model)()
    assert attributor.parameters(model) == kronecker_parameters(model)


def test_trajectory_options_carry_their_settings():
    source = instantiate(
        compose_config("score", ("experiment=tiny", "attributor=source")).attributor
    )
    assert type(source.eigenbasis) is EKFACEigenbasis and source.task == ClassificationTask()
    tracin = instantiate(
        compose_config("score", ("experiment=tiny", "attributor=tracin")).attributor
    )
    assert tracin.task == ClassificationTask()
    average = instantiate(
        compose_config("score", ("experiment=tiny", "attributor=if_ekfac_checkpoints")).attributor
    )
    assert average.last is None and type(average.attributor) is InfluenceFunction
    assert type(average.attributor.solver) is EKFACSolver
    assert average.attributor.task == ClassificationTask()


@pytest.mark.parametrize("projector", ["dense", "sparse", "identity"])
def test_gradient_featurizer_uses_the_chosen_projector(projector):
    cfg = compose_config("featurize", ("experiment=tiny", f"projector={projector}"))
    featurizer = instantiate(cfg.featurizer)
    assert featurizer.projector == instantiate(cfg.projector)
    assert featurizer.task == ClassificationTask()
    if projector != "identity":
        assert featurizer.projector.dim == 16


def test_kronecker_featurizer_takes_the_projection_size():
    cfg = compose_config("featurize", ("experiment=tiny", "featurizer=kronecker"))
    assert instantiate(cfg.featurizer).dim == 16


@pytest.mark.parametrize("primary", PRIMARY)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_overlays_compose_completely(primary, experiment):
    cfg = compose_config(primary, (f"experiment={experiment}",))
    assert cfg.experiment_name == experiment
    assert job_missing_keys(cfg) == set()
    assert cfg.workspace == f"runs/{experiment}"
    assert cfg.scores_name == "trak"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_model_fits_its_data(experiment):
    cfg = compose_config("train", (f"experiment={experiment}",))
    splits = instantiate(cfg.data)
    model = instantiate(cfg.model)()
    logits = model(splits.train.inputs[:3])  # [3, C], or [3, T, V] for a language model
    assert logits.shape[0] == 3 and logits.shape[-1] == splits.num_classes
    assert cfg.queries <= len(splits.test)
    instantiate(cfg.train)
    masks = instantiate(cfg.ground_truth.masks)(n_train=len(splits.train))
    assert masks.shape == (cfg.ground_truth.masks.count, len(splits.train))


def test_benchmark_experiment_is_the_published_setting():
    cfg = compose_config("train")  # the default experiment
    assert cfg.experiment_name == "mnist1d_mlp"
    assert (cfg.data.n_train, cfg.data.n_test, cfg.queries) == (4000, 1000, 200)
    model = instantiate(cfg.model)()
    widths = [
        (layer.in_features, layer.out_features) for layer in model if hasattr(layer, "weight")
    ]
    assert widths == [(40, 128), (128, 128), (128, 10)]
    config = instantiate(cfg.train)
    assert (config.epochs, config.batch_size) == (30, 64)
    assert config.optimizer(model.parameters()).defaults["lr"] == 3e-3
    masks = cfg.ground_truth.masks
    assert (masks.count, masks.alpha, len(cfg.ground_truth.seeds)) == (100, 0.5, 3)


def test_required_values_are_named_when_no_experiment_states_them():
    cfg = compose_config("train", ("~experiment",))
    assert job_missing_keys(cfg) == REQUIRED
    with pytest.raises(MissingMandatoryValue, match="seeds"):
        list(cfg.seeds)
    with pytest.raises(MissingMandatoryValue, match="projector.dim"):
        instantiate(cfg.projector)


def test_scores_are_named_after_the_attributor():
    assert compose_config("lds", ("attributor=gradcos",)).scores_name == "gradcos"


def test_local_launcher_runs_two_joblib_jobs():
    cfg = compose_config("retrain", ("experiment=tiny", "hydra/launcher=local"))
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "JoblibLauncher"
    assert launcher.joblib["n_jobs"] == 2


def test_slurm_launcher_requires_a_partition(monkeypatch):
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    cfg = compose_config("featurize", ("experiment=tiny", "hydra/launcher=slurm"))
    with pytest.raises(InterpolationResolutionError, match="SBATCH_PARTITION"):
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    overrides = ("experiment=tiny", "hydra/launcher=slurm", "hydra.launcher.partition=debug")
    launcher = instantiate(compose_config("featurize", overrides).hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert launcher.params["partition"] == "debug"
    assert launcher.params["account"] is None
    assert launcher.params["cpus_per_task"] == 1  # one job per core: `threads`
    assert launcher.params["timeout_min"] == 120
