"""Plant wrong labels, train, rank by self-influence and write the valuation report.

python experiments/valuation.py experiment=tiny
python experiments/valuation.py valuation.pruning_fractions=[0.1,0.2,0.3,0.4,0.5]
# one row of the mislabel table: TracIn-CP on the CNN, label and model seed 1
python experiments/valuation.py experiment=mnist1d_cnn valuation.ranking=tracin \\
    ++train.checkpoints=10 model_seed=1
"""

import functools
import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.atomic import write_bytes_atomic
from tda.device import on_device
from tda.features import featurize, open_feature_store, store_config
from tda.fingerprint import array_fingerprint, config_fingerprint, model_fingerprint
from tda.methods import InfluenceFunction
from tda.models import build_model
from tda.training import train
from tda.valuation import (
    checkpoint_loss,
    flip_labels,
    loss_gradient_norms,
    pruning_curve,
    self_scores,
    tracin_self_influence,
    valuation_report,
    values_from_scores,
)

log = logging.getLogger(__name__)
RANKINGS = {  # valuation.ranking -> what the report calls it
    "influence": "IF self-influence",
    "trak": "TRAK self-influence",
    "tracin": "TracIn-CP self-influence",
    "graddot": "grad-dot self-score",
    "checkpoint_loss": "mean checkpoint loss",
}
VALUES = {  # valuation.values_from -> what the report calls the values; without queries, minus
    # the mean checkpoint loss, so the pruning curve removes the highest losses first
    "influence": "value (mean IF score over queries)",
    "trak": "value (mean TRAK score over queries)",
    "checkpoint_loss": "minus the mean checkpoint loss",
}
TRAINED = ("data", "model", "train")  # with the flipped labels, what decides the trained model
KEYED = (*TRAINED, "attributor", "featurizer", "valuation")  # and the reports: with the queries


@hydra.main(config_path="../conf", config_name="valuation", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Returns the AUC of the chosen self-influence as a detector of the flipped labels."""
    options = cfg.valuation
    if options.ranking not in RANKINGS or options.values_from not in VALUES:
        raise ValueError(
            f"valuation.ranking={options.ranking!r} must be one of {tuple(RANKINGS)} and "
            f"valuation.values_from={options.values_from!r} one of {tuple(VALUES)}"
        )
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    splits = instantiate(cfg.data)
    noisy, flipped = flip_labels(
        splits.train, options.flip_fraction, splits.num_classes, options.flip_seed
    )
    factory, config = on_device(instantiate(cfg.model), cfg.device), instantiate(cfg.train)
    queries = held_out_queries(splits.test, cfg.queries)
    run, settings = run_directory(workspace, cfg, len(queries))
    model = build_model(factory, cfg.model_seed)
    trained = train(model, noisy, config, seed=cfg.model_seed, checkpoint_dir=run / "models")
    attributions = Attributions(cfg, model, noisy, queries, run)
    # read the checkpoints once where the ranking and the values both use their losses
    losses = functools.cache(lambda: checkpoint_loss(factory, trained.checkpoints, noisy))
    if options.values_from == "checkpoint_loss":
        scores, values = None, -losses()
    else:  # the rest of the test set measures the pruning curve's accuracy
        scores = attributions.query_scores(options.values_from)
        values = values_from_scores(scores)
    curve = None
    if options.pruning_fractions:  # its removals follow the values: runs keyed by them
        curve = pruning_curve(
            factory,
            noisy,
            splits.test.subset(range(len(queries), len(splits.test))),
            values,
            fractions=list(options.pruning_fractions),
            seeds=list(options.pruning_seeds),
            config=config,
            workspace=run / f"pruning-{options.values_from}-{array_fingerprint(values)[:12]}",
            progress=cfg.progress,
        )
    rankings = {
        "tracin": lambda: tracin_self_influence(factory, trained.checkpoints, noisy),
        "graddot": lambda: loss_gradient_norms(model, noisy),
        "checkpoint_loss": losses,
    }
    ranking = rankings.get(options.ranking, lambda: attributions.self_scores(options.ranking))
    report = valuation_report(
        noisy,
        scores=scores,
        values=values if scores is None else None,
        self_influence=ranking(),
        flipped=flipped,
        pruning=curve,
        value_name=VALUES[options.values_from],
        suspicion_name=RANKINGS[options.ranking],
    )
    directory = run / f"{options.ranking}-{options.values_from}-{config_fingerprint(settings)[:8]}"
    report.save(directory)  # one report per choice and settings
    write_bytes_atomic(directory / "settings.json", json.dumps(settings, indent=2).encode())
    log.info("report written to %s", directory)
    log.info("%s ranking: %s", options.ranking, report.mislabel)
    return report.mislabel.auc


def held_out_queries(test, requested: int):
    """The first ``requested`` test examples, at most half the split: the rest measures the
    pruning curve's accuracy. A cut is logged (and recorded in the report's settings.json)."""
    queries = test.subset(range(min(requested, len(test) // 2)))
    if len(queries) < requested:
        log.warning(
            "valuation takes the first %d test examples as queries, not queries=%d: the other "
            "half of the test split measures the pruning curve's accuracy",
            len(queries),
            requested,
        )
    return queries


def run_directory(workspace: Path, cfg: DictConfig, n_queries: int) -> tuple[Path, dict]:
    """The run's directory, keyed by what decides its trained model (data, model, training, the
    flipped labels), and the settings that decide its reports (queries, attributor, featurizer,
    valuation), which key each report: runs with other settings never replace each other's files.
    """
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in KEYED}
    fraction, flip_seed = settings["valuation"]["flip_fraction"], settings["valuation"]["flip_seed"]
    trained = config_fingerprint({key: settings[key] for key in TRAINED} | {"flip": fraction})
    name = f"seed-{cfg.model_seed}-flip-{flip_seed}-fraction-{fraction:g}-{trained[:8]}"
    return workspace / "valuation" / name, settings | {"queries": n_queries}


class Attributions:
    """Influence functions and TRAK on the trained model, each fitted once when first asked."""

    def __init__(self, cfg: DictConfig, model, train_data, queries, run: Path) -> None:
        self.cfg, self.model, self.run = cfg, model, run
        self.train, self.queries = train_data, queries
        self.fitted: dict = {}

    def query_scores(self, kind: str) -> torch.Tensor:
        """``[n_query, n_train]`` scores of the held-out queries."""
        fitted = self._fitted(kind)
        return fitted.score(self.queries) if kind == "influence" else fitted.score("query")

    def self_scores(self, kind: str) -> torch.Tensor:
        """``[n_train]`` self-influence."""
        fitted = self._fitted(kind)
        if kind == "influence":
            return fitted.self_influence()
        return self_scores(lambda rows: fitted.score("train", indices=rows), len(self.train), 512)

    def _fitted(self, kind: str):
        if kind not in self.fitted:
            self.fitted[kind] = self._influence() if kind == "influence" else self._trak()
        return self.fitted[kind]

    def _influence(self) -> InfluenceFunction:
        options = self.cfg.valuation
        parameters = list(options.influence_parameters or []) or None
        influence = InfluenceFunction(instantiate(options.solver), parameters=parameters)
        try:
            return influence.fit(self.model, self.train)
        except ValueError as error:  # e.g. EK-FAC on a normalisation layer: name the fix
            raise ValueError(
                f"{error}; here: valuation.influence_parameters=[...] (e.g. only the weights and "
                "biases of Linear and convolution layers), or valuation.ranking / "
                "valuation.values_from without influence"
            ) from error

    def _trak(self):
        """TRAK on a store of this model's features: keyed by its fingerprint, since the model
        was just retrained (bitwise the same on the CPU, not on a GPU), and by the featurizer's
        settings and the queries, so it is shared safely by jobs that train the same model (a
        multirun over rankings) and a run with another projection or query count gets its own."""
        featurizer = instantiate(self.cfg.featurizer)
        settings = store_config(featurizer, self.cfg.shard_size)
        key = config_fingerprint({"store": settings, "queries": self.queries.fingerprint()})
        directory = self.run / f"features-{model_fingerprint(self.model)[:16]}-{key[:8]}"
        store = open_feature_store(directory, featurizer, self.cfg.shard_size)
        splits = {"train": self.train, "query": self.queries}
        featurize(self.model, splits, featurizer, store, checkpoint_id="final", progress=False)
        return instantiate(self.cfg.attributor).fit(store)


if __name__ == "__main__":
    main()
