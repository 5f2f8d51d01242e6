"""Score the queries with any attributor: on the feature store, or on the members' checkpoints.

Store-based attributors (TRAK, grad-dot, grad-cos) fit on the training features of the members'
final checkpoints (run featurize.py first); the others (influence functions, TracIn, Source:
:class:`tda.methods.runs.RunAttributor`) fit on each member's checkpoints and the training set,
averaged over the members. Either way this writes ``${workspace}/scores/<scores_name>.npy``
(``[n_query, n_train]``, positive = the training example pushes the query's output up) and a JSON
record of how the scores were made (with the seconds from loading the data to the finished scores,
and the threads), which lds.py and counterfactual.py read. With
``query_split=train`` the queries are the training points themselves (``[n_train, n_train]``), the
score matrix a DMM predictor reads (``predictor=scores``, :func:`unlearn.load_scores_predictor`).
A run replaces earlier scores of its name only where they score the same queries: name scores of
other queries yourself (``scores_name=<name>-train``), or the run is refused before it scores.

    python experiments/score.py experiment=tiny attributor=trak
    python experiments/score.py experiment=tiny attributor=if_ekfac models=1 scores_name=ekfac-m1
    python experiments/score.py attributor=if_ekfac query_split=train scores_name=if_ekfac-train
"""

import json
import logging
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.arguments import check_positive_int, check_seeds
from tda.data.queries import first_queries
from tda.device import on_device
from tda.ensemble import check_member, store_id
from tda.features import open_feature_store
from tda.methods.runs import RunAttributor, TrainingRun, attribute_runs
from tda.scores import save_scores
from unlearn.predictors import architecture

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="score", version_base="1.3")
def main(cfg: DictConfig) -> str:
    """Score the "query" split against "train"; returns the path of the saved scores."""
    torch.set_num_threads(cfg.threads)
    started = time.perf_counter()
    workspace = Path(to_absolute_path(cfg.workspace))
    seeds = check_seeds("seeds", cfg.seeds)
    if cfg.models is not None:
        check_positive_int("models", cfg.models)
    if cfg.models is not None and not 1 <= cfg.models <= len(seeds):
        raise ValueError(f"models={cfg.models} must be between 1 and the {len(seeds)} seeds")
    splits, attributor = instantiate(cfg.data), instantiate(cfg.attributor)
    queries = _queries(cfg, splits)
    model_factory = on_device(instantiate(cfg.model), cfg.device)
    saved = _members(cfg, model_factory, workspace, seeds[: cfg.models], splits.train)
    path = workspace / "scores" / f"{cfg.scores_name}.npy"
    _check_replaceable(cfg, path, queries)  # before scoring: the only long step
    if isinstance(attributor, RunAttributor):
        scores, inputs = _score_runs(attributor, model_factory, saved, splits.train, queries)
    else:
        scores, inputs = _score_store(cfg, attributor, workspace, saved, splits.train, queries)
    record = {
        "attributor": OmegaConf.to_container(cfg.attributor, resolve=True),
        **inputs,
        "members": sorted(int(seed) for seed in saved),
        "shape": list(scores.shape),
        "query_split": cfg.query_split,
        "architecture": architecture(instantiate(cfg.model)()),
        "query_fingerprint": queries.fingerprint(),
        "train_fingerprint": splits.train.fingerprint(),
        "seconds": round(time.perf_counter() - started, 2),
        "threads": cfg.threads,
        "resolved_device": str(model_factory.device),  # cfg.device may say auto
    }
    save_scores(path, scores, record)
    log.info("scores %s of %d members saved to %s", scores.shape, len(saved), path)
    return str(path)


def _members(cfg, model_factory, workspace, seeds, train) -> dict[int, list]:
    """Each member's checkpoints, refused unless it finished training on ``train`` with the
    config's settings and model (:func:`tda.ensemble.check_member`)."""
    config, task = instantiate(cfg.train), instantiate(cfg.task)
    root = workspace / "models"
    return {s: check_member(model_factory, train, config, s, root, task=task) for s in seeds}


def _queries(cfg, splits):
    """The first ``queries`` test examples, or (``query_split=train``) every training example."""
    if cfg.query_split == "test":
        return first_queries(splits.test, cfg.queries)
    if cfg.query_split == "train":
        return splits.train
    raise ValueError(f"query_split must be 'test' or 'train', got {cfg.query_split!r}")


def _check_replaceable(cfg, path: Path, queries) -> None:
    """Refuse to replace scores of other queries (another split, count or examples) saved under
    the same name: e.g. ``query_split=train`` under the default name would silently replace the
    test-query scores lds.py reads. Scores of the same queries (other members, another
    attributor) may be replaced; so may scores without a record (a killed run's)."""
    record_path = path.with_suffix(".json")
    if not (path.is_file() and record_path.is_file()):
        return
    made = json.loads(record_path.read_text())
    if made.get("query_fingerprint") == queries.fingerprint():
        return
    held = _described(made.get("query_split", "test"), made.get("shape", ["?"])[0])
    asked = _described(cfg.query_split, len(queries))
    same = " (other examples)" if held == asked else ""
    raise ValueError(
        f"{path} holds scores of {held}{same}, not of the {asked} asked for, and would be "
        f"replaced: pass another scores_name (e.g. scores_name={cfg.scores_name}-"
        f"{cfg.query_split}), or delete {path} and {record_path} to replace them"
    )


def _described(split: str, count) -> str:
    return f"{count} training points as queries" if split == "train" else f"{count} test queries"


def _score_runs(attributor, model_factory, saved, train, queries) -> tuple[np.ndarray, dict]:
    """Mean over members of the attributor fitted on each member's checkpoints."""
    runs = [TrainingRun(model_factory, tuple(run), train) for run in saved.values()]
    scores = attribute_runs(attributor, runs, queries).cpu().numpy()
    return scores, {"checkpoints": [store_id(s, c) for s, run in saved.items() for c in run]}


def _score_store(cfg, attributor, workspace, saved, train, queries) -> tuple[np.ndarray, dict]:
    """The attributor fitted on the features of the members' final checkpoints; the store must
    hold features of ``train`` and ``queries``, the examples the record names."""
    store = open_feature_store(workspace / "features", instantiate(cfg.featurizer), cfg.shard_size)
    checkpoints = [store_id(seed, run[-1]) for seed, run in saved.items()]
    for checkpoint_id, run in zip(checkpoints, saved.values(), strict=True):
        store.check_checkpoint(checkpoint_id, run[-1].fingerprint)  # features of these models
    split = "train" if cfg.query_split == "train" else "query"
    for name, examples in {"train": train, split: queries}.items():  # StoreMismatchError if not
        store.declare_split(name, len(examples), examples.fingerprint())
    scores = attributor.fit(store, split="train", checkpoints=checkpoints).score(split).numpy()
    featurizer = OmegaConf.to_container(cfg.featurizer, resolve=True)
    return scores, {"featurizer": featurizer, "checkpoints": checkpoints}


if __name__ == "__main__":
    main()
