"""Train the ensemble members ``seeds`` into ``${workspace}/models`` (finished members are skipped).

python experiments/train.py experiment=tiny
python experiments/train.py -m hydra/launcher=local seeds=[0,1],[2,3]   # members in parallel
"""

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from tda.arguments import check_seeds
from tda.atomic import write_json
from tda.device import on_device
from tda.ensemble import load_member, train_ensemble
from tda.outputs import accuracy

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Train (or find) each member and record its test accuracy (for a language model, of the
    next token at the counted positions) and parameter count (a tied weight once); returns the
    mean accuracy."""
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    seeds = check_seeds("seeds", cfg.seeds)
    splits = instantiate(cfg.data)
    model_factory = on_device(instantiate(cfg.model), cfg.device)
    members = train_ensemble(
        model_factory,
        splits.train,
        instantiate(cfg.train),
        seeds,
        workspace / "models",
        task=instantiate(cfg.task),
        progress=cfg.progress,
    )
    results = workspace / "results"
    results.mkdir(parents=True, exist_ok=True)
    accuracies = []
    for seed, checkpoints in members.items():
        model = load_member(model_factory, checkpoints[-1])
        test_accuracy = accuracy(model, splits.test)
        accuracies.append(test_accuracy)
        log.info("member %d: test accuracy %.4f", seed, test_accuracy)
        record = {
            "seed": seed,
            "checkpoint": checkpoints[-1].checkpoint_id,
            "test_accuracy": test_accuracy,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
            "resolved_device": str(model_factory.device),  # this run's (cfg.device may say auto)
        }
        write_json(results / f"train-seed-{seed}.json", record)
    return sum(accuracies) / len(accuracies)


if __name__ == "__main__":
    main()
