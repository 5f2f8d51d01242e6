"""Fit an NTK surrogate to a trained network and report its faithfulness on held-out queries.

python experiments/ntk.py experiment=tiny
python experiments/ntk.py -m ntk/kernel=trace,pseudo,trace_projected,pseudo_projected

Each job writes ``${workspace}/results/ntk-<kernel>-<machine>[-k<dim>]-seed<s>.json`` with its
settings, versions and command.
"""

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.atomic import write_json
from tda.device import on_device
from tda.models import build_model
from tda.ntk import NTKSurrogate
from tda.training import train
from tda.versions import package_versions

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="valuation_ntk", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Train the network, fit the surrogate, write and return its Kendall tau."""
    torch.set_num_threads(cfg.threads)
    splits = instantiate(cfg.data)
    model = build_model(on_device(instantiate(cfg.model), cfg.device), cfg.model_seed)
    train(model, splits.train, instantiate(cfg.train), seed=cfg.model_seed)
    surrogate = NTKSurrogate(instantiate(cfg.ntk.kernel), instantiate(cfg.ntk.machine))
    start = time.perf_counter()
    surrogate.fit(model, splits.train, progress=cfg.progress)
    report = surrogate.faithfulness(splits.test.subset(range(min(cfg.queries, len(splits.test)))))
    seconds = time.perf_counter() - start
    choices = HydraConfig.get().runtime.choices
    name = _record_name(cfg, choices)
    log.info("%s: %s (%.1f s)", name, report, seconds)
    results = Path(to_absolute_path(cfg.workspace)) / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {
        **report.as_dict(),
        "seconds": seconds,
        "kernel": choices["ntk/kernel"],
        "machine": choices["ntk/machine"],
        "projection_dim": cfg.projection_dim,
        "model_seed": cfg.model_seed,
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "versions": package_versions("tda-unlearn", "torch", "numpy", "scikit-learn", "mnist1d"),
        "command": [sys.executable, *sys.argv],
        "overrides": list(HydraConfig.get().overrides.task),
    }
    write_json(results / f"{name}.json", record)
    return report.kendall_tau


def _record_name(cfg: DictConfig, choices) -> str:
    """``ntk-<kernel>-<machine>[-k<dim>]-seed<s>``: one file per job of a sweep over kernels,
    machines, projection sizes (projected kernels only) or model seeds."""
    kernel = choices["ntk/kernel"]
    size = f"-k{cfg.projection_dim}" if kernel.endswith("_projected") else ""
    return f"ntk-{kernel}-{choices['ntk/machine']}{size}-seed{cfg.model_seed}"


if __name__ == "__main__":
    main()
