"""conf/experiment/mnist1d_cnn.yaml: the MNIST-1D benchmark with only the model swapped."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tda.models import CNN1d

CONF = Path(__file__).resolve().parents[2] / "conf"


def _job(experiment: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("unlearn", overrides=[f"experiment={experiment}"])
    return OmegaConf.to_container(cfg, resolve=False)


def test_the_cnn_overlay_changes_only_the_model_and_the_workspace():
    cnn, mlp = _job("mnist1d_cnn"), _job("mnist1d_mlp")
    assert instantiate(cnn["model"]).func is CNN1d
    assert cnn["experiment_name"] == "mnist1d_cnn" and cnn["workspace"] == mlp["workspace"]
    differing = {key for key in cnn.keys() | mlp.keys() if cnn.get(key) != mlp.get(key)}
    assert differing == {"model", "experiment_name"}
