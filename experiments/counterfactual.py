"""Counterfactual retraining of saved scores: top-k removal against random removal, per seed.

Reads ``${workspace}/scores/<scores_name>.npy`` (from score.py), trains the runs of this job's
``query_batch`` / ``seed_batch`` into ``${workspace}/counterfactual`` (recorded runs are skipped),
and once the whole plan is recorded writes ``${workspace}/results/counterfactual-<name>.json``:

    python experiments/counterfactual.py experiment=tiny attributor=trak
    python experiments/counterfactual.py -m hydra/launcher=local query_batch=[0,1,2,3,4],[5,6,7,8,9]
"""

import dataclasses
import json
import logging
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.atomic import write_bytes_atomic
from tda.data.queries import first_queries
from tda.device import on_device
from tda.eval import (
    CounterfactualStore,
    RemovalRetrainer,
    counterfactual_result,
    plan_removals,
)
from tda.scores import read_scores
from tda.training import recorded_recipe, weight_settings

log = logging.getLogger(__name__)
RECIPE = ("data", "model", "train", "task")  # recorded in the store: a changed recipe is refused


@hydra.main(config_path="../conf", config_name="counterfactual", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Train this job's runs; once the plan is complete, returns the top-k minus random drop."""
    torch.set_num_threads(cfg.threads)
    workspace, plan = Path(to_absolute_path(cfg.workspace)), cfg.counterfactual
    path = workspace / "scores" / f"{cfg.scores_name}.npy"
    scores, made = read_scores(path, mmap=True)
    splits = instantiate(cfg.data)
    queries = first_queries(splits.test, cfg.queries)
    if made["query_fingerprint"] != queries.fingerprint():
        raise ValueError(f"{path} scores other queries than the first {cfg.queries} test examples")
    if made["train_fingerprint"] != splits.train.fingerprint():
        raise ValueError(f"{path} scores another training set than this experiment's")
    everything = plan_removals(scores, **OmegaConf.to_container(plan), method=cfg.scores_name)
    batch = (_listed(cfg.query_batch, plan.queries), _listed(cfg.seed_batch, plan.seeds))
    mine = [r for r in everything if r.query in batch[0] and r.seed in batch[1]]
    recipe = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in RECIPE}
    recipe["train"] = weight_settings(recipe["train"])  # the checkpoints saved do not count
    suffix = "-aligned" if cfg.aligned_batches else ""
    if cfg.aligned_batches:  # recorded only when on, so earlier stores keep their fingerprint
        recipe["aligned_batches"] = True
    store = _open_store(workspace / f"counterfactual{suffix}", splits.train, queries, recipe, plan)
    retrainer = RemovalRetrainer(
        on_device(instantiate(cfg.model), cfg.device),
        splits.train,
        queries,
        instantiate(cfg.train),
        instantiate(cfg.task),
        aligned_batches=cfg.aligned_batches,
    )
    trained = store.run(retrainer, mine, progress=cfg.progress)
    missing = len(store.missing(everything))
    log.info("trained %d models; %d of %d runs missing", trained, missing, len(everything))
    if missing:
        return None
    result = counterfactual_result(store, everything)
    print(result)
    out = workspace / "results" / f"counterfactual-{cfg.scores_name}{suffix}.json"
    _write_record(out, result, cfg, path, made)
    return result.comparisons[-1].extra_drop.mean  # the largest k


def _write_record(out: Path, result, cfg: DictConfig, scores: Path, made: dict) -> None:
    """The result with the scores it read, the settings, versions and command, as JSON."""
    record = {
        **dataclasses.asdict(result),
        "scores": str(scores),
        "scores_made_with": made,
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "command": [sys.executable, *sys.argv],
    }
    write_bytes_atomic(out, json.dumps(record, indent=2).encode())  # jobs may finish together


def _open_store(root: Path, train, queries, recipe: dict, plan) -> CounterfactualStore:
    """The store at ``root``, made for this training set, query set, recipe and random seed."""
    recorded = CounterfactualStore.open(root).config if (root / "manifest.json").is_file() else None
    return CounterfactualStore.create_or_open(
        root,
        n_train=len(train),
        n_query=len(queries),
        query_fingerprint=queries.fingerprint(),
        train_fingerprint=train.fingerprint(),
        config=recorded_recipe(recipe, recorded),  # an earlier store's, saved checkpoints and all
        random_seed=plan.random_seed,
    )


def _listed(batch, plan: list[int]) -> set[int]:
    """This job's part of ``plan``: null is all of it, an int or a list a part."""
    chosen = set(plan) if batch is None else {batch} if isinstance(batch, int) else set(batch)
    if not chosen <= set(plan):
        raise ValueError(f"batch {sorted(chosen)} is not part of the plan {list(plan)}")
    return chosen


if __name__ == "__main__":
    main()
