"""Resumable on-disk record of counterfactual retraining runs (see :mod:`tda.eval.counterfactual`).

One small JSON file per (query, k, removal, seed) and one per full-data seed, each published
atomically and never rewritten, so jobs of a multirun can share a directory and a killed run
resumes where it stopped.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tda.atomic import write_bytes_atomic
from tda.eval.counterfactual import RANDOM, QueryOutcomes, Removal, Retrain
from tda.fingerprint import config_fingerprint
from tda.manifest import manifest_differences
from tda.shards import check_name

_FORMAT = "tda.eval.counterfactual/1"
# what a reopened store must match (config_fingerprint: the training recipe); the last two only
# where the store records them (made before they were, or without a random_seed)
_CHECKED = ("n_train", "n_query", "query_fingerprint", "config_fingerprint")
_RECORDED_SINCE = ("train_fingerprint", "random_seed")


class CounterfactualStore:
    """Resumable on-disk record of counterfactual retraining runs.

    Layout::

        root/manifest.json                          n_train, n_query, fingerprints (queries,
                                                    training set), config, random_seed (if given)
        root/full/seed<s>.json                      full-data outcomes of seed s, all queries
        root/removed/<removal>/q<q>-k<k>-seed<s>.json   one run: removed indices, output, prediction
    """

    def __init__(self, root: Path, manifest: Mapping[str, Any]) -> None:
        self.root = root
        self.n_train: int = manifest["n_train"]
        self.n_query: int = manifest["n_query"]
        self.query_fingerprint: str = manifest["query_fingerprint"]
        self.train_fingerprint: str | None = manifest.get("train_fingerprint")  # None: legacy
        self.config: dict[str, Any] = dict(manifest["config"])
        self.random_seed: int | None = manifest.get("random_seed")  # None: not given at creation

    @classmethod
    def create_or_open(
        cls,
        root: str | os.PathLike,
        *,
        n_train: int,
        n_query: int,
        query_fingerprint: str,
        train_fingerprint: str,
        config: Mapping[str, Any] | None = None,
        random_seed: int | None = None,
    ) -> CounterfactualStore:
        """Creates a store at ``root``, or opens the existing one after checking it matches.

        Args:
            root: Store directory (created if needed).
            n_train: Size of the full training set.
            n_query: Size of the query set the retrainer measures.
            query_fingerprint: Fingerprint of the query set (``Examples.fingerprint()``).
            train_fingerprint: Fingerprint of the full training set (``Examples.fingerprint()``).
                A store made before training sets were recorded has none: it opens unchecked.
            config: JSON description of the training recipe; a different recipe is refused.
            random_seed: ``plan_removals``'s seed of the random control, which every method
                planned into the store shares (``removed/random/``): recorded at creation and
                checked where both the store and the caller know it.

        Raises:
            ValueError: If the existing store was made with other settings.
        """
        root = Path(root)
        manifest = {
            "format": _FORMAT,
            "n_train": int(n_train),
            "n_query": int(n_query),
            "query_fingerprint": str(query_fingerprint),
            "train_fingerprint": str(train_fingerprint),
            "config": json.loads(json.dumps(dict(config or {}), default=str)),
        }
        manifest["config_fingerprint"] = config_fingerprint(manifest["config"])
        if random_seed is not None:
            manifest["random_seed"] = operator.index(random_seed)
        write_bytes_atomic(
            root / "manifest.json", json.dumps(manifest, indent=2).encode(), replace=False
        )
        store = cls.open(root)
        stored = json.loads((root / "manifest.json").read_text())
        differences = manifest_differences(stored, manifest, _CHECKED, _RECORDED_SINCE)
        if differences:
            raise ValueError(
                f"counterfactual store {root} has other settings; " + "; ".join(differences)
            )
        return store

    @classmethod
    def open(cls, root: str | os.PathLike) -> CounterfactualStore:
        """Opens an existing store.

        Raises:
            FileNotFoundError: If ``root`` holds no store.
        """
        root = Path(root)
        if not (root / "manifest.json").exists():
            raise FileNotFoundError(f"no counterfactual store at {root} (missing manifest.json)")
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("format") != _FORMAT:
            raise ValueError(
                f"{root / 'manifest.json'} has unknown format {manifest.get('format')!r}"
            )
        return cls(root, manifest)

    def _full_path(self, seed: int) -> Path:
        return self.root / "full" / f"seed{seed}.json"

    def _path(self, removal: Removal) -> Path:
        name = f"q{removal.query:06d}-k{removal.k:06d}-seed{removal.seed}.json"
        return self.root / "removed" / removal.removal / name

    def missing(self, removals: Iterable[Removal]) -> list[Removal]:
        """The planned runs not recorded yet, in order (full-data runs are not listed)."""
        return [removal for removal in removals if not self._path(removal).exists()]

    def run(self, retrain: Retrain, removals: Iterable[Removal], *, progress: bool = True) -> int:
        """Trains every full-data seed and planned run not yet recorded; returns how many trained.

        Jobs given disjoint removals share the work. Jobs that share a seed may each train its
        full-data model once; the first record wins (on CPU the models are bitwise equal).

        Raises:
            ValueError: If a run is outside the store's training or query set, a recorded run
                removed other examples than planned (the scores or random seed changed), or
                ``retrain`` returned malformed outcomes.
        """
        removals = list(removals)
        self._check(removals)
        seeds = sorted({removal.seed for removal in removals})
        todo = [seed for seed in seeds if not self._full_path(seed).exists()]
        for seed in tqdm(todo, desc="full-data models", disable=not progress):
            outcomes = self._checked(retrain(np.ones(self.n_train, dtype=bool), seed))
            record = {"seed": seed, **{k: v.tolist() for k, v in asdict(outcomes).items()}}
            write_bytes_atomic(self._full_path(seed), json.dumps(record).encode(), replace=False)
        performed = len(todo)
        for removal in tqdm(self.missing(removals), desc="counterfactual", disable=not progress):
            if not self._path(removal).exists():  # else another job got there first
                self._run_one(retrain, removal)
                performed += 1
        return performed

    def _run_one(self, retrain: Retrain, removal: Removal) -> None:
        keep = np.ones(self.n_train, dtype=bool)
        keep[list(removal.removed)] = False
        outcomes = self._checked(retrain(keep, removal.seed))
        record = {
            **asdict(removal),
            "output": float(outcomes.outputs[removal.query]),
            "prediction": int(outcomes.predictions[removal.query]),
        }
        write_bytes_atomic(self._path(removal), json.dumps(record).encode(), replace=False)

    def full(self, seed: int) -> QueryOutcomes:
        """Outcomes of the full-data model of ``seed`` on every query."""
        path = self._full_path(seed)
        if not path.exists():
            raise RuntimeError(f"the full-data model of seed {seed} is not recorded in {self.root}")
        record = json.loads(path.read_text())
        return QueryOutcomes(np.asarray(record["outputs"]), np.asarray(record["predictions"]))

    def load(self, removal: Removal) -> dict[str, Any]:
        """One run's record; ``RuntimeError`` if it is missing, ``ValueError`` if it is stale."""
        path = self._path(removal)
        if not path.exists():
            raise RuntimeError(f"run {path.relative_to(self.root)} is not recorded")
        record = json.loads(path.read_text())
        if tuple(record["removed"]) != removal.removed:
            raise ValueError(
                f"{path} removed other training examples than planned: {self._stale(removal)}"
            )
        return record

    def _stale(self, removal: Removal) -> str:
        """Why a recorded run of ``removal`` differs from the plan, and what to do."""
        if removal.removal != RANDOM:
            return (
                "the scores changed since it was recorded; use a new store or another method name"
            )
        seed = self.random_seed
        drawn = "another random_seed" if seed is None else f"random_seed={seed}"
        return (
            f"the store's random control (shared by every method) was drawn with {drawn}; plan "
            "with the random_seed it was drawn with, or use a new store"
        )

    def _check(self, removals: list[Removal]) -> None:
        for removal in removals:
            check_name("removal", removal.removal)  # a directory name: "../x" would leave the store
            if len(set(removal.removed)) != len(removal.removed):
                raise ValueError(f"{removal} removes an example more than once")
            if not 0 <= removal.query < self.n_query:
                raise ValueError(
                    f"query {removal.query} is out of range for {self.n_query} queries"
                )
            if not all(0 <= index < self.n_train for index in removal.removed):
                raise ValueError(f"{removal} removes indices outside [0, {self.n_train})")
            if self._path(removal).exists():
                self.load(removal)  # raises if stale

    def _checked(self, outcomes: QueryOutcomes) -> QueryOutcomes:
        outputs = np.asarray(outcomes.outputs, dtype=np.float64)
        predictions = np.asarray(outcomes.predictions).astype(np.int64)
        if outputs.shape != (self.n_query,) or predictions.shape != (self.n_query,):
            raise ValueError(
                f"retrain returned outputs {outputs.shape} and predictions {predictions.shape}; "
                f"the store needs [{self.n_query}] each"
            )
        if not np.isfinite(outputs).all():
            raise ValueError("retrain returned non-finite outputs")
        return QueryOutcomes(outputs, predictions)
