"""LDS of saved scores against the retraining ground truth, with the ground truth's noise ceiling.

Reads ``${workspace}/scores/<scores_name>.npy`` and ``${workspace}/ground_truth``, prints both
numbers and writes ``${workspace}/results/lds-<scores_name>.json`` (with the settings, so run it
with the experiment the workspace was made with: another is refused):

    python experiments/lds.py experiment=tiny attributor=trak
"""

import dataclasses
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from tda.arguments import check_retraining_seeds
from tda.atomic import write_json
from tda.data.queries import first_queries
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
    scores, made = _read_scores(cfg, path)
    truth = GroundTruthStore.open(workspace / "ground_truth")
    if made["query_fingerprint"] != truth.query_fingerprint:
        count, split = made.get("shape", ["?"])[0], made.get("query_split", "test")
        raise ValueError(
            f"{path} scores other queries ({count}, query_split={split}) than the ground truth in "
            f"{truth.root} was measured on: score the queries it was retrained for (the same "
            "experiment= and queries=, query_split=test), or retrain a ground truth for these"
        )
    trained_on = (truth.train_fingerprint, made.get("train_fingerprint"))  # None: unrecorded
    if None not in trained_on and trained_on[0] != trained_on[1]:
        raise ValueError(
            f"{path} scores another training set than the ground truth in {truth.root}"
        )
    _check_independent(path, made, truth)
    _check_configuration(cfg, truth, made)  # the record's settings must describe what is read
    outputs = truth.outputs()  # [count, n_seeds, n_query]
    result = lds(scores, truth.masks, outputs)
    ceiling = noise_ceiling(outputs) if len(truth.seeds) >= 2 else None
    print(result)
    print(ceiling if ceiling else "Noise ceiling: needs at least 2 retraining seeds")
    record = {
        "scores": str(path),
        "lds": _summary(result),
        "noise_ceiling": _summary(ceiling) if ceiling else None,
        "ground_truth": _store_facts(truth, outputs),
        "scores_made_with": made,
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "versions": _versions(),
        "command": [sys.executable, *sys.argv],
        "overrides": list(HydraConfig.get().overrides.task),
    }
    write_json(workspace / "results" / f"lds-{cfg.scores_name}.json", record)
    return result.mean


def _read_scores(cfg: DictConfig, path: Path) -> tuple[np.ndarray, dict]:
    """:func:`tda.scores.read_scores`, its missing-file error naming the command that makes them."""
    try:
        return read_scores(path)
    except FileNotFoundError as error:
        missing = next((p for p in (path, path.with_suffix(".json")) if not p.is_file()), path)
        raise FileNotFoundError(
            f"{missing} is missing; run `python experiments/score.py {_choice('experiment')} "
            f"{_choice('attributor')} scores_name={cfg.scores_name}` (with this command's other "
            "overrides) first, or pass the scores_name of scores already made"
        ) from error


def _choice(group: str) -> str:
    """``group=<option>`` as this run composed it (``group=<...>`` where Hydra did not record)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return f"{group}={choices.get(group) or '<...>'}"


def _check_configuration(cfg: DictConfig, truth: GroundTruthStore, made: dict) -> None:
    """Refuse a composed configuration that does not describe the workspace's ground truth (and
    scores), e.g. a tiny workspace evaluated without ``experiment=tiny``: the LDS itself reads
    only the files, but the record's settings would describe another experiment.

    Raises:
        ValueError: naming what differs and the ``experiment=`` to pass.
    """
    differing = _differences(cfg, truth, made)
    if differing:
        raise ValueError(
            f"the configuration ({_choice('experiment')}) does not describe the ground truth in "
            f"{truth.root} or the scores evaluated: {'; '.join(differing)}. Pass the experiment= "
            "(and overrides) the workspace was made with (e.g. experiment=tiny)"
        )


def _differences(cfg: DictConfig, truth: GroundTruthStore, made: dict) -> list[str]:
    """What of the configuration's data, queries and ground-truth settings differs from
    ``truth`` (and the scores' record ``made``); fingerprints a store or record lacks pass."""
    splits = instantiate(cfg.data)
    train, queries = splits.train.fingerprint(), first_queries(splits.test, cfg.queries)
    differing = []
    if {truth.train_fingerprint, made.get("train_fingerprint")} - {None, train}:
        differing.append(
            f"data: the configuration's training set ({len(splits.train)} examples) is not the "
            f"one scored and retrained on ({truth.masks.shape[1]} examples)"
        )
    if queries.fingerprint() != truth.query_fingerprint:
        differing.append(f"queries: the configuration's first {cfg.queries} test examples differ")
    if list(cfg.ground_truth.seeds) != truth.seeds:
        differing.append(f"ground_truth.seeds: {list(cfg.ground_truth.seeds)}, store {truth.seeds}")
    masks = instantiate(cfg.ground_truth.masks)(n_train=len(splits.train))
    if not np.array_equal(masks, truth.masks):
        differing.append(
            f"ground_truth.masks: {len(masks)} subsets, store {len(truth.masks)} (other masks)"
        )
    return differing


def _store_facts(truth: GroundTruthStore, outputs: np.ndarray) -> dict:
    """What the ground truth evaluated is, read from the store itself."""
    return {
        "alpha": truth.alpha,
        "subsets": len(truth.masks),
        "seeds": truth.seeds,
        "n_train": truth.masks.shape[1],
        "queries": outputs.shape[2],
        "train_fingerprint": truth.train_fingerprint,
        "query_fingerprint": truth.query_fingerprint,
    }


def scored_members(made: dict) -> set[str]:
    """The members (``seed-<s>``) a score record averages over: ``members`` as score.py records
    them, else the members of the checkpoints read (``seed-<s>.<checkpoint>``; a member may
    have several)."""
    if "members" in made:
        return {f"seed-{seed}" for seed in made["members"]}
    return {checkpoint.split(".")[0] for checkpoint in made.get("checkpoints", ())}


def _check_independent(path: Path, made: dict, truth: GroundTruthStore) -> None:
    """Refuse a ground truth retrained with a scored member's seed
    (:func:`tda.arguments.check_retraining_seeds`, which retrain.py checks before training)."""
    scored = scored_members(made)
    check_retraining_seeds(
        "ground_truth.seeds",
        truth.seeds,
        [seed for seed in truth.seeds if f"seed-{seed}" in scored],
        ground_truth=f"the ground truth in {truth.root}",
        members=f"scored in {path}",
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
