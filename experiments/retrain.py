"""Ground truth for the LDS: retrain on random subsets, record query outputs in the workspace.

The masks come from ``ground_truth.masks`` (a fixed seed), the queries are the first ``queries``
test examples, and every subset is trained once per seed in ``ground_truth.seeds`` with the same
recipe as the attributed models. Recorded pairs are skipped, so jobs can share the subsets:

    python experiments/retrain.py experiment=tiny
    python experiments/retrain.py -m hydra/launcher=local subsets=[0,1],[2,3]
    python experiments/retrain.py -m hydra/launcher=slurm 'subsets=range(0,100)'
"""

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.arguments import check_retraining_seeds, check_seeds
from tda.data.queries import first_queries
from tda.datamodels import GroundTruthStore, SubsetRetrainer
from tda.device import on_device
from tda.training import recorded_recipe, weight_settings

log = logging.getLogger(__name__)
RECIPE = ("data", "model", "train", "task")  # recorded in the store: a changed recipe is refused


@hydra.main(config_path="../conf", config_name="retrain", version_base="1.3")
def main(cfg: DictConfig) -> int:
    """Retrain this job's subsets (an index, a list, or null: all); returns the models trained."""
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    seeds = check_seeds("ground_truth.seeds", cfg.ground_truth.seeds)
    check_retraining_seeds(  # lds.py would refuse the finished ground truth
        "ground_truth.seeds",
        seeds,
        check_seeds("seeds", cfg.seeds),
        ground_truth=f"the ground truth in {workspace / 'ground_truth'}",
        members=f"listed in seeds={list(cfg.seeds)}",
    )
    splits = instantiate(cfg.data)
    queries = first_queries(splits.test, cfg.queries)
    masks = instantiate(cfg.ground_truth.masks)(n_train=len(splits.train))
    recipe = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in RECIPE}
    recipe["train"] = weight_settings(recipe["train"])  # the checkpoints saved do not count
    root = workspace / "ground_truth"
    recorded = GroundTruthStore.open(root).config if (root / "manifest.json").is_file() else None
    store = GroundTruthStore.create_or_open(
        root,
        masks,
        seeds,
        queries.fingerprint(),
        recorded_recipe(recipe, recorded),  # an earlier store's, saved checkpoints and all
        train_fingerprint=splits.train.fingerprint(),
        n_query=len(queries),
    )
    retrainer = SubsetRetrainer(
        on_device(instantiate(cfg.model), cfg.device),
        splits.train,
        queries,
        instantiate(cfg.train),
        instantiate(cfg.task),
    )
    subsets = [cfg.subsets] if isinstance(cfg.subsets, int) else cfg.subsets
    trained = store.run(retrainer, subsets=subsets, progress=cfg.progress)
    log.info("trained %d models; %d (subset, seed) pairs missing", trained, len(store.missing()))
    return trained


if __name__ == "__main__":
    main()
