"""Fit the attributor on the training features and score the queries.

Writes ``${workspace}/scores/<scores_name>.npy`` (``[n_query, n_train]``, the library's sign
convention: positive = the training example pushes the query's output up) and a JSON record of
how the scores were made, which lds.py copies into its results.

    python experiments/score.py experiment=tiny attributor=trak
    python experiments/score.py experiment=tiny attributor=gradcos models=1 scores_name=gradcos-m1
"""

import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.checkpoints import list_checkpoints
from tda.ensemble import member_directory, store_id
from tda.features import open_feature_store

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="score", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """Score the "query" split against "train"; returns the path of the saved scores."""
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    seeds = list(cfg.seeds)
    if cfg.models is not None and not 1 <= cfg.models <= len(seeds):
        raise ValueError(f"models={cfg.models} must be between 1 and the {len(seeds)} seeds")
    members = seeds[: cfg.models]
    checkpoints = [
        store_id(seed, list_checkpoints(member_directory(workspace / "models", seed))[-1])
        for seed in members
    ]
    store = open_feature_store(workspace / "features", instantiate(cfg.featurizer), cfg.shard_size)
    attributor = instantiate(cfg.attributor).fit(store, split="train", checkpoints=checkpoints)
    scores = attributor.score("query").numpy()
    splits = instantiate(cfg.data)
    queries = splits.test.subset(range(cfg.queries))
    path = workspace / "scores" / f"{cfg.scores_name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, scores)
    record = {
        "attributor": OmegaConf.to_container(cfg.attributor, resolve=True),
        "featurizer": OmegaConf.to_container(cfg.featurizer, resolve=True),
        "checkpoints": checkpoints,
        "shape": list(scores.shape),
        "query_fingerprint": queries.fingerprint(),
        "train_fingerprint": splits.train.fingerprint(),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2))
    log.info("scores %s of %d checkpoints saved to %s", scores.shape, len(checkpoints), path)
    return str(path)


if __name__ == "__main__":
    main()
