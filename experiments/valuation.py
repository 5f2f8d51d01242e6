"""Plant wrong labels, train, rank by self-influence and write the valuation report.

python experiments/valuation.py experiment=tiny
python experiments/valuation.py valuation.pruning_fractions=[0.1,0.2,0.3,0.4,0.5]
# one row of the mislabel table: TracIn-CP on the CNN, label and model seed 1
python experiments/valuation.py experiment=mnist1d_cnn valuation.ranking=tracin \
    ++train.checkpoints=10 'valuation.influence_parameters=[head.weight,head.bias]' \
    valuation.flip_seed=1 model_seed=1
"""

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from tda.device import on_device
from tda.methods import InfluenceFunction
from tda.models import build_model
from tda.training import train
from tda.valuation import (
    flip_labels,
    loss_gradient_norms,
    pruning_curve,
    tracin_self_influence,
    valuation_report,
)

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="valuation", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Returns the AUC of self-influence as a detector of the flipped labels."""
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    splits, options = instantiate(cfg.data), cfg.valuation
    noisy, flipped = flip_labels(
        splits.train, options.flip_fraction, splits.num_classes, options.flip_seed
    )
    factory, config = on_device(instantiate(cfg.model), cfg.device), instantiate(cfg.train)
    model = build_model(factory, cfg.model_seed)
    saved = workspace / "valuation" / "models" / f"seed-{cfg.model_seed}-flip-{options.flip_seed}"
    checkpoints = train(model, noisy, config, seed=cfg.model_seed, checkpoint_dir=saved).checkpoints
    parameters = list(options.influence_parameters or []) or None
    influence = InfluenceFunction(instantiate(options.solver), parameters=parameters)
    influence.fit(model, noisy)
    queries = splits.test.subset(range(min(cfg.queries, len(splits.test) // 2)))
    scores = influence.score(queries)  # values on held-out queries, the rest measures accuracy
    curve = None
    if options.pruning_fractions:
        held_out = splits.test.subset(range(len(queries), len(splits.test)))
        curve = pruning_curve(
            factory,
            noisy,
            held_out,
            scores.mean(0),
            fractions=list(options.pruning_fractions),
            seeds=list(options.pruning_seeds),
            config=config,
            workspace=workspace / "pruning",
            progress=cfg.progress,
        )
    report = valuation_report(
        noisy,
        scores=scores,
        self_influence=suspicion(options.ranking, influence, factory, checkpoints),
        flipped=flipped,
        pruning=curve,
    )
    report.save(workspace / "valuation")
    log.info("%s self-influence: %s", options.ranking, report.mislabel)
    return report.mislabel.auc


def suspicion(ranking: str, influence, factory, checkpoints) -> torch.Tensor:
    """Self-influence ``[n]`` by the chosen ranking (higher: more likely mislabelled); TracIn and
    grad-dot go through every parameter."""
    model, noisy = influence.model, influence.train
    rankings = {
        "influence": influence.self_influence,
        "tracin": lambda: tracin_self_influence(factory, checkpoints, noisy),
        "graddot": lambda: loss_gradient_norms(model, noisy),
    }
    if ranking not in rankings:
        raise ValueError(f"valuation.ranking={ranking!r}: choose one of {sorted(rankings)}")
    return rankings[ranking]()


if __name__ == "__main__":
    main()
