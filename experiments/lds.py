"""LDS of saved scores against the retraining ground truth, with the ground truth's noise ceiling.

Reads ``${workspace}/scores/<scores_name>.npy`` and ``${workspace}/ground_truth``, prints both
numbers and writes ``${workspace}/results/lds-<scores_name>.json``:

    python experiments/lds.py experiment=tiny attributor=trak
"""

import dataclasses
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.atomic import write_json
from tda.datamodels import GroundTruthStore
from tda.eval import LDSResult, lds, noise_ceiling
from tda.scores import read_scores
from tda.versions import package_versions


@hydra.main(config_path="../conf", config_name="lds", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Evaluate one score matrix; returns the mean LDS (the headline metric for sweepers)."""
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    path = workspace / "scores" / f"{cfg.scores_name}.npy"
    scores, made = read_scores(path)
    truth = GroundTruthStore.open(workspace / "ground_truth")
    if made["query_fingerprint"] != truth.query_fingerprint:
        raise ValueError(f"{path} scores other queries than the ground truth in {truth.root}")
    trained_on = (truth.train_fingerprint, made.get("train_fingerprint"))  # None: unrecorded
    if None not in trained_on and trained_on[0] != trained_on[1]:
        raise ValueError(
            f"{path} scores another training set than the ground truth in {truth.root}"
        )
    _check_independent(path, made, truth)
    outputs = truth.outputs()  # [count, n_seeds, n_query]
    result = lds(scores, truth.masks, outputs)
    ceiling = noise_ceiling(outputs) if len(truth.seeds) >= 2 else None
    print(result)
    print(ceiling if ceiling else "Noise ceiling: needs at least 2 retraining seeds")
    record = {
        "scores": str(path),
        "lds": _summary(result),
        "noise_ceiling": _summary(ceiling) if ceiling else None,
        "ground_truth": {"alpha": truth.alpha, "subsets": len(truth.masks), "seeds": truth.seeds},
        "scores_made_with": made,
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "versions": _versions(),
        "command": [sys.executable, *sys.argv],
        "overrides": list(HydraConfig.get().overrides.task),
    }
    write_json(workspace / "results" / f"lds-{cfg.scores_name}.json", record)
    return result.mean


def scored_members(made: dict) -> set[str]:
    """The members (``seed-<s>``) a score record averages over: ``members`` as score.py records
    them, else the members of the checkpoints read (``seed-<s>.<checkpoint>``; a member may
    have several)."""
    if "members" in made:
        return {f"seed-{seed}" for seed in made["members"]}
    return {checkpoint.split(".")[0] for checkpoint in made.get("checkpoints", ())}


def _check_independent(path: Path, made: dict, truth: GroundTruthStore) -> None:
    """Refuse a ground truth retrained with a member's seed: that model starts from the member's
    initial weights (and shuffling), so it agrees with the member more than an independent
    retraining would, and the member's LDS can be inflated."""
    shared = [seed for seed in truth.seeds if f"seed-{seed}" in scored_members(made)]
    if shared:
        raise ValueError(
            f"the ground truth in {truth.root} retrains with seeds {shared}, which the members "
            f"scored in {path} were trained with: retrain it with seeds apart from the members' "
            "(ground_truth.seeds, e.g. [1000, 1001, 1002])"
        )


def _summary(result: LDSResult) -> dict:
    """JSON form of an LDS result; undefined per-query correlations become null."""
    fields = dataclasses.asdict(result)
    fields["per_query"] = [
        None if np.isnan(value) else value for value in result.per_query.tolist()
    ]
    return fields


def _versions() -> dict[str, str]:
    return package_versions("tda-unlearn", "torch", "numpy", "scipy", "hydra-core", "mnist1d")


if __name__ == "__main__":
    main()
