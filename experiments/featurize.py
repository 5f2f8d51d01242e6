"""Featurize the members' final checkpoints into the feature store ``${workspace}/features``.

Both splits are featurized: "train" (the training set) and "query" (the first ``queries`` test
examples). Each shard is written atomically and skipped when present, so jobs that split the
shards between them (or a rerun after a crash) fill the same store:

    python experiments/featurize.py experiment=tiny
    python experiments/featurize.py -m hydra/launcher=local shards=0,1,2 seeds=[0],[1]
"""

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from tda.arguments import check_seeds
from tda.data.queries import first_queries
from tda.device import on_device
from tda.ensemble import check_member, load_member, store_id
from tda.features import featurize, open_feature_store, shard_count

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="featurize", version_base="1.3")
def main(cfg: DictConfig) -> int:
    """Write this job's shards of every chosen member and split; returns the shards written."""
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    seeds = check_seeds("seeds", cfg.seeds)
    splits = instantiate(cfg.data)
    examples = {"train": splits.train, "query": first_queries(splits.test, cfg.queries)}
    sizes = {name: len(data) for name, data in examples.items()}
    shards = _shards_of(cfg.shards, sizes, cfg.shard_size)
    model_factory = on_device(instantiate(cfg.model), cfg.device)
    finals = _finals(cfg, model_factory, workspace, seeds, splits.train)
    featurizer = instantiate(cfg.featurizer)
    store = open_feature_store(workspace / "features", featurizer, cfg.shard_size)
    written = 0
    for seed, checkpoint in finals.items():
        model = load_member(model_factory, checkpoint)
        written += featurize(
            model,
            examples,
            featurizer,
            store,
            checkpoint_id=store_id(seed, checkpoint),
            shards=shards,
            storage_dtype=_storage_dtype(cfg.storage_dtype),
            progress=cfg.progress,
        )
    log.info("wrote %d shards into %s", written, store.root)
    return written


def _finals(cfg, model_factory, workspace, seeds, train) -> dict:
    """Each member's final checkpoint, refused unless it finished training on ``train`` with the
    config's settings and model (:func:`tda.ensemble.check_member`)."""
    config, task, root = instantiate(cfg.train), instantiate(cfg.task), workspace / "models"
    return {
        seed: check_member(model_factory, train, config, seed, root, task=task)[-1]
        for seed in seeds
    }


def _storage_dtype(name: str | None) -> torch.dtype | None:
    """``null`` (the model's compute dtype), ``bfloat16``, ``float16``, ``float32``, ``float64``."""
    choices = {
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
        "float64": torch.float64,
    }
    if name is not None and name not in choices:
        raise ValueError(f"storage_dtype={name!r}: choose null or one of {sorted(choices)}")
    return None if name is None else choices[name]


def _shards_of(wanted, sizes: dict[str, int], shard_size: int) -> dict[str, list[int] | None]:
    """Per split, the requested shard indices (an int, a list, or None: all) that it has."""
    if wanted is None:
        return dict.fromkeys(sizes)
    wanted = [wanted] if isinstance(wanted, int) else [int(index) for index in wanted]
    totals = {name: shard_count(size, shard_size) for name, size in sizes.items()}
    bad = [index for index in wanted if not 0 <= index < max(totals.values())]
    if bad:
        raise ValueError(f"shards {bad} do not exist: the splits have {totals} shards")
    return {name: [index for index in wanted if index < totals[name]] for name in sizes}


if __name__ == "__main__":
    main()
