"""KLOM of forgetting facts: the distribution over models of each fact's answer log-likelihood.

The facts, model, training and methods of ``experiments.facts_unlearning`` (its config is this
one's default), with :math:`N` originals, :math:`N` oracles retrained without the forgotten people
and :math:`N` more oracles for the floor. For every method and every learning rate of ``grid``
each original is unlearned through the request API; KLOM P95, KL(unlearned || oracle), is taken
over the answer log-likelihood (``LanguageModelingTask.output``) of the forgotten facts and of
the retained ones; the retrained row (the floor oracles against the oracles) is the floor. The
row of each method is the learning rate its proxy chose (``chosen``, from
``results/facts-unlearning.json``); the other rates are its trade-off:

    python -m experiments.facts_klom      # writes results/facts-klom.json

Each finished (method, rate) is kept under ``${workspace}/klom/`` and read back by a later run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from experiments.facts_unlearning import method_with, people_split, unlearn_all, write_results
from tda.arguments import check_seeds
from tda.atomic import write_bytes_atomic
from tda.data.facts import FactSet
from tda.device import on_device, resolve_device
from unlearn import answer_probabilities, klom_report, load_or_train, load_or_train_oracles

log = logging.getLogger(__name__)

# what a cached (method, rate) row depends on besides the method itself
DECIDES = (
    "facts", "forget_people", "split_seed", "model", "task", "train", "seeds", "oracle_seed",
    "device",
)  # fmt: skip


def group_row(models, oracles, points, task) -> dict:
    """KLOM per point set and the mean answer probability on F."""
    report = klom_report(models, oracles, None, points, task=task)
    probability = [answer_probabilities(model, points["forget"]).mean() for model in models]
    return {**report, "forget_probability": float(np.mean(probability))}


def cached_row(cfg: DictConfig, name: str, value: float, directory: Path, measure) -> dict:
    """``measure()`` for method ``name`` at ``value``, kept in ``directory`` under a key of
    everything that decides it."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    spec = {key: resolved[key] for key in DECIDES} | {"method": resolved["methods"][name]}
    spec["device"] = str(resolve_device(spec["device"]))  # "auto" differs between machines
    text = json.dumps({**spec, "value": value}, sort_keys=True)
    path = directory / f"{name}-{value:g}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    row = measure()
    write_bytes_atomic(path, json.dumps(row).encode())
    return row


def frontier(cfg, name, originals, facts, forget, judge, directory) -> list[dict]:
    """A row for every learning rate of the grid on the real request."""
    rows = []
    for value in cfg.grid:

        def measure(value=value):
            done = unlearn_all(method_with(cfg, name, value), originals, facts, forget, cfg.seeds)
            return judge([model for model, _ in done])

        rows.append({"value": value, **cached_row(cfg, name, value, directory, measure)})
        row = rows[-1]
        log.info(
            "%s lr %g: KLOM forget %.2f, retain %.2f", name, value, row["forget"], row["retain"]
        )
    return rows


def check_chosen(cfg: DictConfig) -> None:
    """Every method has a chosen learning rate, and it is one of the grid's."""
    for name in cfg.methods:
        if name not in cfg.chosen or cfg.chosen[name] not in cfg.grid:
            raise ValueError(f"chosen.{name} must be one of grid {list(cfg.grid)}")


@hydra.main(config_path="../conf", config_name="facts_klom", version_base="1.3")
def main(cfg: DictConfig) -> None:
    check_seeds("seeds", cfg.seeds)
    check_chosen(cfg)
    torch.set_num_threads(cfg.threads)
    workspace = Path(to_absolute_path(cfg.workspace))
    facts: FactSet = instantiate(cfg.facts)
    forget, _ = people_split(facts, cfg.forget_people, cfg.split_seed)
    retain = np.setdiff1d(np.arange(len(facts.facts)), forget)
    factory = on_device(instantiate(cfg.model), cfg.device)
    config, task, seeds = instantiate(cfg.train), instantiate(cfg.task), list(cfg.seeds)
    originals = load_or_train(factory, facts.facts, config, seeds, workspace / "models", task=task)

    def oracles(first):
        chosen = [first + s for s in seeds]
        return load_or_train_oracles(
            factory, facts.facts, forget, config, chosen, workspace / "oracles", task=task
        ).models

    reference, twins = oracles(cfg.oracle_seed), oracles(cfg.retrain_seed)
    points = {"forget": facts.facts.subset(forget), "retain": facts.facts.subset(retain)}

    def judge(models):
        return group_row(models, reference, points, task)

    # the retrained twins against the oracles: the floor
    found = {"rows": {"original": judge(originals), "retrain": judge(twins)}, "frontier": {}}
    for name in cfg.methods:
        rows = frontier(cfg, name, originals, facts, forget, judge, workspace / "klom")
        found["frontier"][name] = rows
        found["rows"][name] = next(row for row in rows if row["value"] == cfg.chosen[name])
    write_results(cfg, "facts_klom", found)


if __name__ == "__main__":
    main()
