"""The NTK and valuation Hydra configs compose and build the library's objects."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tda.curvature import EKFACSolver
from tda.ntk import EmpiricalNTK, KernelLogisticRegression, KernelSVM
from tda.projection import SparseProjector

CONF = Path(__file__).resolve().parents[2] / "conf"
KERNELS = sorted(path.stem for path in (CONF / "ntk" / "kernel").glob("*.yaml"))


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_option_builds_an_ntk(kernel):
    cfg = compose_config("valuation_ntk", [f"ntk/kernel={kernel}", "experiment=tiny"])
    ntk = instantiate(cfg.ntk.kernel)
    assert isinstance(ntk, EmpiricalNTK) and ntk.kind == kernel.split("_")[0]
    if kernel.endswith("projected"):
        assert ntk.projector == SparseProjector(16)  # projection_dim of the tiny experiment
    else:
        assert ntk.projector is None


@pytest.mark.parametrize(
    ("machine", "built"), [("logistic", KernelLogisticRegression), ("svm", KernelSVM)]
)
def test_machine_options(machine, built):
    cfg = compose_config("valuation_ntk", [f"ntk/machine={machine}"])
    assert isinstance(instantiate(cfg.ntk.machine), built)


def test_valuation_config():
    cfg = compose_config("valuation", ["experiment=tiny"])
    assert isinstance(instantiate(cfg.valuation.solver), EKFACSolver)
    assert cfg.valuation.flip_fraction == 0.1 and list(cfg.valuation.pruning_fractions) == []
