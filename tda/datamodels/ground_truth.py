"""Resumable on-disk record of model outputs after retraining on random subsets.

This is the ground truth of datamodels and of the LDS (Ilyas et al. 2022; Park et al. 2023,
Section 2): for every subset mask ``masks[j]`` and every retraining seed ``s``, a model is trained
on the subset and its outputs on the query points are recorded. Layout of a store directory::

    root/manifest.json                      alpha, n_train, count, seeds, fingerprints, config,
                                            n_query (when the creator gave it)
    root/masks.npy                          bool [count, n_train]
    root/outputs/subset000012_seed3.npy     float64 [n_query], one file per (subset, seed)

Every file is written to a temporary name, fsynced and then moved into place, and no file is ever
modified once written, so a killed run leaves no half-written record and any number of processes
(a job array, say) can record into the same store at the same time.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from io import BytesIO
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tda.atomic import make_directories, write_bytes_atomic
from tda.fingerprint import array_fingerprint, config_fingerprint
from tda.manifest import manifest_differences

_FORMAT = "tda.datamodels.ground_truth/1"
_MANIFEST = "manifest.json"
_MASKS = "masks.npy"
_OUTPUTS = "outputs"


class GroundTruthStore:
    """Resumable on-disk record of model outputs on query points after retraining on subsets.

    Build one with :meth:`create_or_open` (training workers) or :meth:`open` (evaluation), then call
    :meth:`run` with a function that trains on a subset and measures the query outputs.

    Attributes:
        root: Directory of the store.
        masks: Read-only boolean subset masks ``[count, n_train]``.
        seeds: Retraining seeds; every subset is trained once per seed.
        query_fingerprint: Fingerprint of the query points the outputs are measured on.
        train_fingerprint: Fingerprint of the full training set the masks select from (``None``
            for a store made before training sets were recorded).
        config: The JSON configuration recorded at creation (training recipe, output definition).
        n_query: Number of outputs of every record (``None`` for a store created without it).
    """

    def __init__(self, root: Path, masks: np.ndarray, manifest: Mapping[str, Any]) -> None:
        self.root = root
        self.masks = masks
        self.masks.flags.writeable = False
        self.seeds: list[int] = list(manifest["seeds"])
        self.query_fingerprint: str = manifest["query_fingerprint"]
        self.train_fingerprint: str | None = manifest.get("train_fingerprint")  # None: legacy
        self.config: dict[str, Any] = dict(manifest["config"])
        self.n_query: int | None = manifest.get("n_query")  # None: not given at creation

    @classmethod
    def create_or_open(
        cls,
        root: str | os.PathLike,
        masks: np.ndarray,
        seeds: Sequence[int],
        query_fingerprint: str,
        config: Mapping[str, Any] | None = None,
        *,
        train_fingerprint: str,
        n_query: int | None = None,
    ) -> GroundTruthStore:
        """Creates a store at ``root``, or opens the existing one after checking it matches.

        Safe to call from many processes at once: the first to arrive writes ``masks.npy`` and
        ``manifest.json`` (each created exclusively from a complete temporary file); the others
        check that the stored masks, seeds, query and training-set fingerprints and configuration
        equal theirs.

        Args:
            root: Store directory (created if needed).
            masks: Subset masks ``[count, n_train]`` (bool, or 0/1 integers).
            seeds: Distinct retraining seeds.
            query_fingerprint: Fingerprint of the query set, e.g.
                ``tda.fingerprint.array_fingerprint(query_inputs, query_targets)``.
            config: JSON-serialisable description of the training recipe and measured output.
            train_fingerprint: Fingerprint of the full training set (``Examples.fingerprint()``).
                A store made before training sets were recorded has none: it opens unchecked.
            n_query: Number of query outputs of every record, when known: recorded at creation,
                after which :meth:`record` refuses outputs of another length. Checked against
                the store's where both know it.

        Raises:
            ValueError: If the arguments are malformed or differ from those of the existing store.
        """
        root = Path(root)
        masks = _validated_masks(masks)
        fingerprints = {"query": query_fingerprint, "train": train_fingerprint}
        manifest = _new_manifest(masks, _validated_seeds(seeds), fingerprints, config or {})
        if n_query is not None:
            manifest["n_query"] = _validated_n_query(n_query)
        if not (root / _MANIFEST).exists():
            make_directories(root / _OUTPUTS)
            _check_masks(
                root, masks, write_bytes_atomic(root / _MASKS, _npy_bytes(masks), replace=False)
            )
            write_bytes_atomic(
                root / _MANIFEST, json.dumps(manifest, indent=2).encode(), replace=False
            )
        store = cls.open(root)
        _check_manifest(root, _read_manifest(root), manifest)
        return store

    @classmethod
    def open(cls, root: str | os.PathLike) -> GroundTruthStore:
        """Opens an existing store, e.g. to evaluate against its outputs.

        Raises:
            FileNotFoundError: If ``root`` holds no store.
            ValueError: If ``masks.npy`` does not match the fingerprint in the manifest.
        """
        root = Path(root)
        if not (root / _MANIFEST).exists():
            interrupted = (
                f"; the {_MASKS} there is from a creation interrupted (or still under way) before "
                f"writing it: create_or_open with the same masks completes it, or delete {_MASKS}"
                " to start over"
            )
            raise FileNotFoundError(
                f"no ground-truth store at {root} (missing {_MANIFEST})"
                + (interrupted if (root / _MASKS).exists() else "")
            )
        manifest = _read_manifest(root)
        masks = np.load(root / _MASKS)
        if array_fingerprint(masks) != manifest["masks_fingerprint"]:
            raise ValueError(f"{root / _MASKS} does not match the masks fingerprint in {_MANIFEST}")
        return cls(root, masks, manifest)

    @property
    def alpha(self) -> float:
        """Fraction of the training set in each subset (the mean over subsets, as recorded in
        the manifest and reported by :func:`tda.eval.lds`, should their sizes differ)."""
        return float(self.masks.mean())

    def _path(self, subset: int, seed: int) -> Path:
        return self.root / _OUTPUTS / f"subset{subset:06d}_seed{seed}.npy"

    def _check_pair(self, subset: int, seed: int) -> None:
        if not 0 <= subset < len(self.masks):
            raise ValueError(f"subset {subset} is out of range for a store of {len(self.masks)}")
        if seed not in self.seeds:
            raise ValueError(f"seed {seed} is not one of the store's seeds {self.seeds}")

    def is_done(self, subset: int, seed: int) -> bool:
        """Whether the outputs of ``(subset, seed)`` are recorded."""
        self._check_pair(subset, seed)
        return self._path(subset, seed).exists()

    def record(self, subset: int, seed: int, outputs: np.ndarray) -> None:
        """Atomically records the query outputs ``[n_query]`` of the model for ``(subset, seed)``;
        a pair already recorded is kept (the first record wins, as jobs sharing a pair may each
        measure it), so no record is ever modified.

        Raises:
            ValueError: If the pair is unknown, or ``outputs`` is not a finite 1-D array of the
                store's ``n_query`` values (where known).
        """
        self._check_pair(subset, seed)
        values = np.asarray(outputs, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(
                f"outputs of subset {subset}, seed {seed} must be 1-D [n_query], "
                f"got shape {values.shape}"
            )
        if self.n_query is not None and len(values) != self.n_query:
            raise ValueError(
                f"outputs of subset {subset}, seed {seed} hold {len(values)} values, but the "
                f"store's n_query is {self.n_query}"
            )
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise ValueError(
                f"outputs of subset {subset}, seed {seed} hold {bad} non-finite values"
            )
        write_bytes_atomic(self._path(subset, seed), _npy_bytes(values), replace=False)

    def run(
        self,
        measure: Callable[[np.ndarray, int], np.ndarray],
        subsets: Iterable[int] | None = None,
        *,
        progress: bool = True,
    ) -> int:
        """Trains and measures every requested ``(subset, seed)`` pair not yet recorded.

        Args:
            measure: ``measure(mask, seed)`` trains a model on the examples where the read-only
                boolean ``mask [n_train]`` is True, with seed ``seed``, and returns its outputs
                ``[n_query]`` on the query points.
            subsets: Subset indices to cover (default: all). Disjoint lists let several processes
                share the work; overlapping ones only waste time, never corrupt the store.
            progress: Show a tqdm progress bar.

        Returns:
            The number of pairs measured in this call (0 when everything was already recorded).

        Raises:
            TypeError: ``subsets`` holds something other than integers, e.g. a boolean mask
                (whose ``True``/``False`` would otherwise be read as the subsets 1 and 0).
        """
        indices = range(len(self.masks)) if subsets is None else _subset_indices(subsets)
        todo = [(i, s) for i in indices for s in self.seeds if not self.is_done(i, s)]
        performed = 0
        for subset, seed in tqdm(todo, desc="ground truth", disable=not progress):
            if self.is_done(subset, seed):  # another process got there first
                continue
            self.record(subset, seed, measure(self.masks[subset], seed))
            performed += 1
        return performed

    def missing(self) -> list[tuple[int, int]]:
        """The ``(subset, seed)`` pairs whose outputs are not recorded yet, in order."""
        present = set(os.listdir(self.root / _OUTPUTS))
        return [
            (subset, seed)
            for subset in range(len(self.masks))
            for seed in self.seeds
            if self._path(subset, seed).name not in present
        ]

    def outputs(self) -> np.ndarray:
        """All recorded outputs as float64 ``[count, n_seeds, n_query]``.

        Raises:
            RuntimeError: If some pairs are missing (the message gives how many and the first few).
            ValueError: If records disagree on the number of queries (the message names the
                records of each length).
        """
        missing = self.missing()
        if missing:
            total = len(self.masks) * len(self.seeds)
            raise RuntimeError(
                f"ground-truth store {self.root} is incomplete: {len(missing)} of {total} "
                f"(subset, seed) pairs are missing, first {missing[:5]}"
            )
        rows = [[np.load(self._path(i, s)) for s in self.seeds] for i in range(len(self.masks))]
        shapes = {
            self._path(i, s).name: row.shape
            for i, per_seed in enumerate(rows)
            for s, row in zip(self.seeds, per_seed, strict=True)
        }
        _check_one_shape(self.root, shapes)
        return np.asarray(rows, dtype=np.float64)


def _check_one_shape(root: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raises a ValueError naming the records of each shape, most common first, if they differ."""
    named: dict[tuple[int, ...], list[str]] = {}
    for name, shape in shapes.items():
        named.setdefault(shape, []).append(name)
    if len(named) == 1:
        return
    listed = "; ".join(
        f"{shape}: {len(names)} record{'' if len(names) == 1 else 's'} "
        f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
        for shape, names in sorted(named.items(), key=lambda group: -len(group[1]))
    )
    raise ValueError(
        f"records in {root} disagree on n_query: {listed}; delete the records of the wrong "
        "length (a record is never replaced) and run again"
    )


def _subset_indices(subsets: Iterable[int]) -> list[int]:
    """``subsets`` (a sequence, array or tensor of integers) as a list of Python ints."""
    values = subsets.tolist() if hasattr(subsets, "tolist") else list(subsets)
    values = values if isinstance(values, list) else [values]  # a 0-d array or tensor
    bad = [value for value in values if isinstance(value, bool) or not isinstance(value, Integral)]
    if bad:
        raise TypeError(
            f"subsets must be integer subset indices, not booleans or floats; got {bad[:5]}"
        )
    return [int(value) for value in values]


def _validated_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 2 or masks.shape[0] < 1 or masks.shape[1] < 1:
        raise ValueError(f"masks must be a non-empty 2-D array [count, n_train], got {masks.shape}")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise ValueError("masks must be boolean or hold only 0 and 1")
        masks = masks.astype(bool)
    return np.ascontiguousarray(masks)


def _validated_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise ValueError("at least one retraining seed is needed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return seeds


def _validated_n_query(n_query: int) -> int:
    n_query = operator.index(n_query)
    if n_query < 1:
        raise ValueError(f"n_query must be a positive number of query outputs, got {n_query}")
    return n_query


def _new_manifest(
    masks: np.ndarray, seeds: list[int], fingerprints: Mapping[str, str], config: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "alpha": float(masks.sum(axis=1).mean() / masks.shape[1]),
        "n_train": int(masks.shape[1]),
        "count": int(masks.shape[0]),
        "seeds": seeds,
        "query_fingerprint": str(fingerprints["query"]),
        "train_fingerprint": str(fingerprints["train"]),
        "masks_fingerprint": array_fingerprint(masks),
        "config": json.loads(json.dumps(dict(config), default=str)),
        "config_fingerprint": config_fingerprint(config),
    }


def _check_manifest(root: Path, stored: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    """Raises a ValueError naming every field in which ``given`` differs from the stored store."""
    checked = (
        "count",
        "n_train",
        "masks_fingerprint",
        "seeds",
        "query_fingerprint",
        "config_fingerprint",
    )
    # train_fingerprint and n_query: unchecked where the store lacks them (made before they were
    # recorded, or without n_query), and n_query where the caller does not know it
    differences = manifest_differences(stored, given, checked, ("train_fingerprint", "n_query"))
    if differences:
        raise ValueError(
            f"ground-truth store {root} was created with different settings; "
            + "; ".join(differences)
        )


def _check_masks(root: Path, masks: np.ndarray, created: bool) -> None:
    """After losing the race to create ``masks.npy``, checks the winner wrote the same masks."""
    if not created and array_fingerprint(np.load(root / _MASKS)) != array_fingerprint(masks):
        raise ValueError(
            f"ground-truth store {root} was created with different masks; if no {_MANIFEST} "
            f"follows them, a creation was interrupted before writing it (no outputs can be "
            f"recorded yet): delete {root / _MASKS} and run again"
        )


def _read_manifest(root: Path) -> dict[str, Any]:
    manifest = json.loads((root / _MANIFEST).read_text())
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{root / _MANIFEST} has unknown format {manifest.get('format')!r}")
    return manifest


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
