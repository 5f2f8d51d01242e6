"""How much the tuning proxy's oracles lean on the real oracles through their shared seeds.

Hyperparameters are chosen on a proxy forget set F' against oracles retrained without F' from the
real oracles' seeds (``oracle_seed + i``), so proxy oracle i starts from the initial weights and
batch order of real oracle i. This measures that link: the Pearson correlation of each real
oracle's margins with its shared-seed proxy oracle's, against the same with a proxy oracle from an
independent seed (``independent_seed + i``), on the evaluation test points, on F and on F'. Mean
and 95% t-interval over the N pairs:

    python -m experiments.proxy_oracles forget=random_10pct   # -> results/proxy-oracles-*.json
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from benchmarks.record import write_record
from experiments.unlearning import setting
from unlearn import load_or_train_oracles, margins_of
from unlearn.benchmark import interval


def paired_correlations(first: np.ndarray, second: np.ndarray) -> list[float]:
    """Pearson correlation of row i of ``first`` with row i of ``second`` (``[N, points]`` each)."""
    if first.shape != second.shape:
        raise ValueError(f"margins of shapes {first.shape} and {second.shape} cannot be paired")
    return [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(first, second, strict=True)]


def link(real: np.ndarray, shared: np.ndarray, independent: np.ndarray) -> dict:
    """Correlations of the real oracles with the shared-seed and the independent proxy oracles."""
    return {
        "shared_seed": interval(paired_correlations(real, shared)),
        "independent_seed": interval(paired_correlations(real, independent)),
    }


@hydra.main(config_path="../conf", config_name="proxy_oracles", version_base="1.3")
def main(cfg: DictConfig) -> None:
    workspace, splits, forget_set, factory, config = setting(cfg)
    train = splits.train
    forget, proxy = forget_set.indices(train), forget_set.proxy(train).indices(train)
    shared_seeds = [cfg.oracle_seed + i for i in range(cfg.models)]
    other_seeds = [cfg.independent_seed + i for i in range(cfg.models)]
    root = workspace / "oracles"
    groups = {
        "real": load_or_train_oracles(factory, train, forget, config, shared_seeds, root),
        "shared": load_or_train_oracles(factory, train, proxy, config, shared_seeds, root),
        "independent": load_or_train_oracles(factory, train, proxy, config, other_seeds, root),
    }
    points = {
        "test": forget_set.evaluation_test(splits.test),
        "forget": train.subset(forget),
        "proxy_forget": train.subset(proxy),
    }
    results = {}
    for name, examples in points.items():
        margins = {key: margins_of(group.models, examples) for key, group in groups.items()}
        results[name] = link(margins["real"], margins["shared"], margins["independent"])
        shared, independent = (
            results[name][k]["mean"] for k in ("shared_seed", "independent_seed")
        )
        print(f"{name}: shared seeds {shared:.3f}, independent seeds {independent:.3f}")
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings |= {"shared_seeds": shared_seeds, "independent_seeds": other_seeds}
    write_record(
        Path(to_absolute_path(cfg.output)), "proxy_oracles", settings, cfg.threads, results
    )


if __name__ == "__main__":
    main()
