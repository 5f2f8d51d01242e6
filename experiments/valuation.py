"""Plant wrong labels, train, rank by self-influence and write the valuation report.

python experiments/valuation.py experiment=tiny
python experiments/valuation.py valuation.pruning_fractions=[0.1,0.2,0.3,0.4,0.5]
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
from tda.valuation import flip_labels, pruning_curve, valuation_report

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
    train(model, noisy, config, seed=cfg.model_seed)
    influence = InfluenceFunction(instantiate(options.solver)).fit(model, noisy)
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
        self_influence=influence.self_influence(),
        flipped=flipped,
        pruning=curve,
    )
    report.save(workspace / "valuation")
    log.info("self-influence: %s", report.mislabel)
    return report.mislabel.auc


if __name__ == "__main__":
    main()
