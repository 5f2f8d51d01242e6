"""On-disk FeatureStore: per-example arrays for several checkpoints and data splits.

Jobs that may run as separate processes or machines, and may be killed and restarted, each write
their own shards. There is no shared mutable index: everything is derived by listing files.

Layout under ``root``::

    manifest.json                       {"format", "version", "config", "config_fingerprint",
                                        "random_stream", "torch"}: the stream digest and torch
                                        version the projections were drawn under
    splits/<split>.json                 {"split", "size", "data_fingerprint"}
    checkpoints/<checkpoint_id>.json    {"checkpoint_id", "model_fingerprint"}
    dtypes/<name>.json                  {"array", "dtype"}: the one dtype array <name> is kept in
                                        (:meth:`FeatureStore.keep_array_dtype`; optional)
    shards/<checkpoint_id>/<split>/<index:06d>.<name>.npy   rows [start, stop) of array <name>
    shards/<checkpoint_id>/<split>/<index:06d>.json         sidecar {"start", "stop",
                                        "arrays": {name: {"shape", "dtype", "sha256"}}}

Every file is written to a unique ``.<file>.<random>.tmp`` beside it, fsynced, then published by
``os.replace`` (data files) or by a no-clobber hard link (records and sidecars: the first writer
wins, later ones compare). A shard's sidecar is written last, so a shard is complete when its
sidecar and the data files it lists exist; a killed writer's leftovers are ignored and overwritten.
Files are read with ``json`` and ``np.load(allow_pickle=False)`` only; an array whose sidecar
dtype is ``"bfloat16"`` holds raw 16-bit words (numpy has no bfloat16) and loads as float32.
Two writers racing on one shard index with different content may leave data files unlike the
winning sidecar: ``load(verify=True)`` detects it and rewriting the winning content repairs it.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tda.atomic import HashingWriter, file_digest, make_directories, write_atomic
from tda.describe import differences
from tda.fingerprint import config_fingerprint
from tda.projection.base import random_stream_digest
from tda.shards import (
    SIDECAR,
    CorruptShardError,
    IncompleteStoreError,
    ShardInfo,
    StoreMismatchError,
    check_index,
    check_name,
    check_rows,
    check_same_shard,
    complete_sidecar,
    copy_into,
    coverage_problems,
    data_path,
    decode,
    dtype_name,
    encode,
    load_npy,
    loaded_dtype,
    save_npy,
    saved_dtype,
)

FORMAT, VERSION = "tda.FeatureStore", 1
__all__ = [
    "CorruptShardError",
    "FeatureStore",
    "IncompleteStoreError",
    "ShardInfo",
    "StoreMismatchError",
]


def _publish_json(path: Path, record: dict) -> dict:
    """Create the JSON ``record`` at ``path`` unless a file is there; return what it holds."""
    text = json.dumps(record, indent=1, sort_keys=True).encode()
    write_atomic(path, lambda sink: sink.write(text), replace=False)
    return json.loads(path.read_text())


def _normalize_config(config: Mapping[str, Any]) -> dict:
    try:
        return json.loads(json.dumps(dict(config), sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"a store config must be plain JSON data (no NaN): {error}") from None


def _check_manifest(root: Path, found: dict, config: dict, stream: str) -> None:
    """Refuse a store of another format, config, or random stream (``stream``: this torch's
    :func:`random_stream_digest`)."""
    if (found.get("format"), found.get("version")) != (FORMAT, VERSION):
        raise StoreMismatchError(f"{root} is not a {FORMAT} store of version {VERSION}: {found}")
    recorded = found.get("random_stream")  # absent: a store made before it was recorded
    if recorded is not None and recorded != stream:
        raise StoreMismatchError(
            f"store {root} was made under torch {found.get('torch')}, whose random stream "
            f"differs from this torch's ({torch.__version__}): projections drawn now would not "
            "match the stored features; featurize into a new store directory, or use that torch"
        )
    differing = differences(found["config"], config, names=("store has", "given"))
    if differing:
        raise StoreMismatchError(
            f"store {root} was built with a different config ({'; '.join(differing)}); "
            "use a new store directory or the store's config"
        )


class FeatureStore:
    """Sharded, resumable, checksummed per-example arrays on disk (layout: module docstring).

    Arrays are e.g. projected gradient ``features`` ``[n, k]`` and TRAK's ``out_to_loss`` ``[n]``.
    Call :meth:`declare_split` and :meth:`register_checkpoint` before :meth:`write_shard`.
    """

    def __init__(self, root: Path, config: dict) -> None:
        self.root, self.config = root, config
        # directory -> index -> sidecar of the complete shards seen: a sidecar is never replaced,
        # so each is read once per store object, not once per shard written (O(n^2) reads)
        self._seen_shards: dict[Path, dict[int, dict]] = {}

    @classmethod
    def open(cls, root: str | os.PathLike, config: Mapping[str, Any]) -> FeatureStore:
        """Open the store at ``root``, creating it if ``root`` is absent or empty.

        Raises:
            StoreMismatchError: the store was built with another config (the keys are named).
            ValueError: ``root`` is a non-empty directory without a manifest.
        """
        root, config = Path(root), _normalize_config(config)
        make_directories(root)
        entries = {entry.name for entry in root.iterdir() if not entry.name.endswith(".tmp")}
        if entries and "manifest.json" not in entries:
            raise ValueError(f"{root} is not empty and has no manifest.json: not a feature store")
        manifest = {"format": FORMAT, "version": VERSION, "config": config}
        manifest["config_fingerprint"] = config_fingerprint(config)
        stream = random_stream_digest()
        manifest |= {"random_stream": stream, "torch": torch.__version__}
        _check_manifest(root, _publish_json(root / "manifest.json", manifest), config, stream)
        return cls(root, config)

    def declare_split(self, split: str, size: int, data_fingerprint: str) -> None:
        """Record that ``split`` has ``size`` examples whose content has ``data_fingerprint``."""
        size = operator.index(size)
        if size <= 0:
            raise ValueError(f"split {split!r} needs a positive size, got {size}")
        record = {"split": split, "size": size, "data_fingerprint": data_fingerprint}
        found = self._publish("splits", split, record, data_fingerprint)
        if found != record:
            raise StoreMismatchError(
                f"store {self.root} declares split {split!r} with {found['size']} examples "
                f"(data fingerprint {found['data_fingerprint'][:8]}…), but {size} examples (data "
                f"fingerprint {data_fingerprint[:8]}…) were given; use a new store directory or "
                "the matching data"
            )

    def register_checkpoint(
        self, checkpoint_id: str, model_fingerprint: str, parameters: Sequence[str] | None = None
    ) -> None:
        """Record that ``checkpoint_id`` names the model whose state has ``model_fingerprint``,
        and, if given, the names of the ``parameters`` its features differentiate.

        The fingerprint covers the state only, so the same weights with a layer frozen (another
        ``requires_grad``) pass it; the parameter names tell them apart. A checkpoint recorded
        without them (by a store from before they were, or with ``parameters=None``) is not
        checked for them.

        Raises:
            StoreMismatchError: the store recorded another model fingerprint or other parameters
                under ``checkpoint_id``.
        """
        record: dict[str, Any] = {
            "checkpoint_id": checkpoint_id,
            "model_fingerprint": model_fingerprint,
        }
        if parameters is not None:
            record["parameters"] = list(parameters)
        found = self._publish("checkpoints", checkpoint_id, record, model_fingerprint)
        if found["model_fingerprint"] != model_fingerprint:
            raise StoreMismatchError(
                f"store {self.root} holds features of checkpoint {checkpoint_id!r} computed from "
                f"model fingerprint {found['model_fingerprint'][:8]}…, but the model given has "
                f"{model_fingerprint[:8]}…; use a new store directory or the matching checkpoint"
            )
        if None not in (parameters, found.get("parameters")) and found["parameters"] != list(
            parameters
        ):
            raise StoreMismatchError(_other_parameters(self.root, checkpoint_id, found, parameters))

    def check_checkpoint(self, checkpoint_id: str, model_fingerprint: str) -> None:
        """Refuse to read ``checkpoint_id``'s features as those of the model with
        ``model_fingerprint`` unless the store recorded exactly that model for it.

        Raises:
            StoreMismatchError: the store has no such checkpoint, or features of another model
                under its id (e.g. the members were retrained after featurizing).
        """
        found = self._records("checkpoints").get(checkpoint_id)
        if found is None:
            raise StoreMismatchError(
                f"store {self.root} has no features of checkpoint {checkpoint_id!r}; featurize it"
            )
        if found["model_fingerprint"] != model_fingerprint:
            raise StoreMismatchError(
                f"store {self.root} holds features of checkpoint {checkpoint_id!r} computed from "
                f"model fingerprint {found['model_fingerprint'][:8]}…, but that checkpoint is now "
                f"{model_fingerprint[:8]}…: featurize again into a new store directory"
            )

    def _publish(self, kind: str, name: str, record: dict, fingerprint: str) -> dict:
        check_name(kind[:-1], name)
        check_name("fingerprint", fingerprint)
        return _publish_json(self.root / kind / f"{name}.json", record)

    def _records(self, kind: str) -> dict[str, dict]:
        paths = sorted((self.root / kind).glob("*.json"))
        return {path.stem: json.loads(path.read_text()) for path in paths}

    def fingerprint(self) -> str:
        """What decides the store's features, hashed: its featurizer configuration, each
        registered checkpoint's model fingerprint and each declared split's data fingerprint (a
        store rebuilt in place for other models or data gets another one)."""
        records = {kind: self._records(kind) for kind in ("checkpoints", "splits")}
        return config_fingerprint({"config": self.config, **records})

    def checkpoints(self) -> list[str]:
        """Registered checkpoint ids, sorted."""
        return sorted(self._records("checkpoints"))

    def splits(self) -> dict[str, int]:
        """Declared splits -> number of examples."""
        return {split: record["size"] for split, record in self._records("splits").items()}

    def array_dtype(self, name: str) -> str | None:
        """The dtype array ``name`` is kept in across the store, as sidecars write it (``"<f4"``,
        ``"bfloat16"``): as recorded by :meth:`keep_array_dtype`, or, in a store from before it
        was recorded, as its complete shards hold it; None when neither says.

        Raises:
            StoreMismatchError: nothing recorded, and the shards hold ``name`` in several dtypes.
        """
        path = self._dtype_path(name)
        if path.is_file():
            return json.loads(path.read_text())["dtype"]
        held = self._held_dtypes(name)
        if len(held) > 1:
            raise StoreMismatchError(
                f"the shards of store {self.root} hold array {name!r} in several dtypes "
                f"({', '.join(sorted(map(dtype_name, held)))}); delete the shards of the dtype not "
                "wanted and write them again"
            )
        return held.pop() if held else None

    def keep_array_dtype(self, name: str, dtype: str) -> None:
        """Record that array ``name`` is kept as ``dtype`` (a sidecar dtype) in every shard; the
        first record wins (a store from before records the dtype its shards hold).

        Raises:
            StoreMismatchError: the store keeps ``name`` in another dtype.
        """
        path = self._dtype_path(name)
        if not path.is_file():
            _publish_json(path, {"array": name, "dtype": self.array_dtype(name) or dtype})
        kept = self.array_dtype(name)
        if kept != dtype:
            raise StoreMismatchError(
                f"store {self.root} keeps array {name!r} as {dtype_name(kept)}, not "
                f"{dtype_name(dtype)}; write it as {dtype_name(kept)}, or use a new store directory"
            )

    def _dtype_path(self, name: str) -> Path:
        return self.root / "dtypes" / f"{check_name('array name', name)}.json"

    def _held_dtypes(self, name: str) -> set[str]:
        """The dtypes of array ``name`` in every complete shard of the store."""
        directories = sorted((self.root / "shards").glob("*/*"))
        sidecars = [record for d in directories for record in self._complete_shards(d).values()]
        return {r["arrays"][name]["dtype"] for r in sidecars if name in r["arrays"]}

    def _shard_dir(self, checkpoint_id: str, split: str) -> Path:
        check_name("checkpoint", checkpoint_id)
        return self.root / "shards" / checkpoint_id / check_name("split", split)

    def _split_size(self, checkpoint_id: str, split: str) -> int:
        if not (
            self.root / "checkpoints" / f"{check_name('checkpoint', checkpoint_id)}.json"
        ).exists():
            raise ValueError(f"checkpoint {checkpoint_id!r} is not registered in {self.root}")
        path = self.root / "splits" / f"{check_name('split', split)}.json"
        if not path.is_file():
            raise ValueError(f"split {split!r} is not declared in {self.root}")
        return json.loads(path.read_text())["size"]

    @staticmethod
    def _complete_shards(directory: Path) -> dict[int, dict]:
        """Index -> sidecar of each complete shard in ``directory``."""
        records = {index: complete_sidecar(directory, index) for index in _sidecars(directory)}
        return {index: record for index, record in records.items() if record is not None}

    def _shards_seen(self, directory: Path) -> dict[int, dict]:
        """Index -> sidecar of each complete shard in ``directory``, reading only sidecars this
        object has not read before."""
        indices, seen = _sidecars(directory), self._seen_shards.setdefault(directory, {})
        for index in set(indices) - seen.keys():
            record = complete_sidecar(directory, index)
            if record is not None:
                seen[index] = record
        return {index: seen[index] for index in indices if index in seen}

    def has_shard(self, checkpoint_id: str, split: str, index: int) -> bool:
        """Whether shard ``index`` is complete (its sidecar and data files exist)."""
        directory = self._shard_dir(checkpoint_id, split)
        return complete_sidecar(directory, check_index(index)) is not None

    def shards(self, checkpoint_id: str, split: str) -> list[ShardInfo]:
        """The complete shards of ``(checkpoint_id, split)``, sorted by first row."""
        infos = []
        for index, record in self._complete_shards(self._shard_dir(checkpoint_id, split)).items():
            arrays = {k: (tuple(v["shape"]), v["dtype"]) for k, v in record["arrays"].items()}
            infos.append(
                ShardInfo(checkpoint_id, split, index, record["start"], record["stop"], arrays)
            )
        return sorted(infos, key=lambda info: (info.start, info.index))

    def write_shard(
        self,
        checkpoint_id: str,
        split: str,
        index: int,
        start: int,
        arrays: Mapping[str, np.ndarray],
    ) -> None:
        """Write rows ``[start, start + n)`` of ``split`` as shard ``index``.

        Args:
            arrays: name -> array ``[n, ...]``, one ``n > 0`` for all; float arrays must be finite.
                A torch ``bfloat16`` tensor is kept as raw 16-bit words (half a float32 array, the
                float32 exponent range) and loaded back as float32.

        Rewriting a complete shard with the same content writes nothing (it repairs missing or
        corrupt data files). Other content, or rows overlapping another shard, raise
        :class:`StoreMismatchError`.
        """
        size, index = self._split_size(checkpoint_id, split), check_index(index)
        encoded = {name: encode(name, value) for name, value in arrays.items()}
        values = {name: decode(array, dtype) for name, (array, dtype) in encoded.items()}
        start = operator.index(start)
        record: dict[str, Any] = {"start": start, "stop": check_rows(values, start, size, split)}
        record["arrays"] = {}
        for name, (array, dtype) in encoded.items():
            sink = HashingWriter()
            save_npy(array, sink)
            meta = {"shape": list(array.shape), "dtype": dtype}
            record["arrays"][name] = {**meta, "sha256": sink.digest.hexdigest()}
        fills = {name: partial(save_npy, array) for name, (array, _) in encoded.items()}
        self._put_shard(self._shard_dir(checkpoint_id, split), index, record, fills)

    def _put_shard(self, directory: Path, index: int, record: dict, fills: Mapping) -> bool:
        """Write a shard's data files with ``fills``, then its sidecar; True if the shard is new."""
        if (directory / f"{index:06d}.json").is_file():
            check_same_shard(directory, index, record)
        for other_index, other in self._shards_seen(directory).items():
            overlap = min(record["stop"], other["stop"]) - max(record["start"], other["start"])
            if other_index != index and overlap > 0:
                raise StoreMismatchError(
                    f"rows [{record['start']}, {record['stop']}) of shard {index} overlap rows "
                    f"[{other['start']}, {other['stop']}) of shard {other_index} in {directory}"
                )
        for name, meta in record["arrays"].items():
            path = data_path(directory, index, name)
            if not path.is_file() or file_digest(path) != meta["sha256"]:
                if write_atomic(path, fills[name]) != meta["sha256"]:
                    path.unlink(missing_ok=True)
                    raise CorruptShardError(f"{path} does not match the sha256 of its sidecar")
        text = json.dumps(record, indent=1, sort_keys=True).encode()
        sidecar = directory / f"{index:06d}.json"
        if write_atomic(sidecar, lambda sink: sink.write(text), replace=False):
            return True
        check_same_shard(directory, index, record)  # already complete, or another writer won
        return False

    def load(
        self, checkpoint_id: str, split: str, name: str = "features", *, verify: bool = False
    ) -> np.ndarray:
        """All rows of array ``name`` in row order, ``[size, ...]``.

        Raises:
            IncompleteStoreError: the shards do not tile ``[0, size)`` (missing rows are named).
            CorruptShardError: a data file is truncated, or does not match its sidecar (sha256
                with ``verify``).
        """
        directory, shards = self._covering(checkpoint_id, split, name)
        first = shards[0][1]["arrays"][name]
        shape = (shards[-1][1]["stop"], *first["shape"][1:])
        out = np.empty(shape, dtype=loaded_dtype(first["dtype"]))
        for start, block in self._blocks(directory, shards, name, verify):
            out[start : start + len(block)] = block
        return out

    def iter_rows(
        self, checkpoint_id: str, split: str, name: str = "features", *, verify: bool = False
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` shard by shard in row order, one shard in memory at a time."""
        directory, shards = self._covering(checkpoint_id, split, name)
        return self._blocks(directory, shards, name, verify)

    def _covering(self, checkpoint_id: str, split: str, name: str) -> tuple[Path, list]:
        """The complete shards holding ``name``, in row order, checked to tile ``[0, size)``."""
        size = self._split_size(checkpoint_id, split)
        directory = self._shard_dir(checkpoint_id, split)
        shards = sorted(
            (
                item
                for item in self._complete_shards(directory).items()
                if name in item[1]["arrays"]
            ),
            key=lambda item: (item[1]["start"], item[0]),
        )
        problems = coverage_problems(shards, size)
        if problems:
            raise IncompleteStoreError(
                f"array {name!r} of checkpoint {checkpoint_id!r}, split {split!r} in {self.root} "
                f"is incomplete: {'; '.join(problems)} ({len(shards)} complete shards cover "
                f"part of {size} rows); write the missing shards, then load again"
            )
        layouts = {(*r["arrays"][name]["shape"][1:], r["arrays"][name]["dtype"]) for _, r in shards}
        if len(layouts) > 1:
            raise StoreMismatchError(
                f"shards of {name!r} in {directory} differ: {layouts} (shape, dtype); an array "
                "keeps one layout in a store (features: one storage_dtype), so delete the shards "
                "of the other one and write them again"
            )
        return directory, shards

    @staticmethod
    def _blocks(directory: Path, shards: list, name: str, verify: bool) -> Iterator:
        for index, record in shards:
            path, meta = data_path(directory, index, name), record["arrays"][name]
            if verify and file_digest(path) != meta["sha256"]:
                raise CorruptShardError(f"{path} does not match the sha256 of its sidecar")
            block = load_npy(path)
            if list(block.shape) != meta["shape"] or block.dtype.str != saved_dtype(meta["dtype"]):
                raise CorruptShardError(f"{path} does not have the shape and dtype of its sidecar")
            yield record["start"], decode(block, meta["dtype"])

    def merge_from(self, other_root: str | os.PathLike) -> int:
        """Copy the checkpoints, splits, array dtypes (:meth:`keep_array_dtype`) and complete
        shards of the store at ``other_root``.

        Returns:
            The number of shards copied; shards already here with the same content are skipped.

        Raises:
            StoreMismatchError: another config, an array either store records that the other
                keeps in another dtype, or a conflicting checkpoint, split or shard.
        """
        other = FeatureStore(Path(other_root), self.config)  # read only: never write there
        if not (other.root / "manifest.json").is_file():
            raise ValueError(f"{other_root} is not a feature store (it has no manifest.json)")
        found = json.loads((other.root / "manifest.json").read_text())
        _check_manifest(other.root, found, self.config, random_stream_digest())
        self._merge_dtypes(other)
        for split, record in other._records("splits").items():
            self.declare_split(split, record["size"], record["data_fingerprint"])
        for checkpoint_id, record in other._records("checkpoints").items():
            fingerprint, parameters = record["model_fingerprint"], record.get("parameters")
            self.register_checkpoint(checkpoint_id, fingerprint, parameters)
        copied = 0
        for checkpoint_id in other.checkpoints():
            for split in other.splits():
                source = other._shard_dir(checkpoint_id, split)
                for index, record in other._complete_shards(source).items():
                    names = record["arrays"]
                    fills = {n: partial(copy_into, data_path(source, index, n)) for n in names}
                    target = self._shard_dir(checkpoint_id, split)
                    copied += self._put_shard(target, index, record, fills)
        return copied

    def _merge_dtypes(self, other: FeatureStore) -> None:
        """Refuse ``other`` if it keeps an array that either store records in another dtype than
        this store; else record its dtypes here (carried into a store that records none)."""
        names = sorted(set(self._records("dtypes")) | set(other._records("dtypes")))
        kept = {name: (self.array_dtype(name), other.array_dtype(name)) for name in names}
        differing = [
            f"array {name!r} as {dtype_name(there)}, but {self.root} keeps it as {dtype_name(here)}"
            for name, (here, there) in kept.items()
            if None not in (here, there) and here != there
        ]
        if differing:
            raise StoreMismatchError(
                f"store {other.root} keeps {'; '.join(differing)}; a store keeps an array in one "
                "dtype, so merge only stores written with the same storage_dtype"
            )
        for name, (_, there) in kept.items():
            if there is not None:
                self.keep_array_dtype(name, there)


def _other_parameters(root: Path, checkpoint_id: str, found: dict, given: Sequence[str]) -> str:
    """Why features of ``checkpoint_id`` differentiating ``given`` are refused beside those
    recorded (``found``), naming the parameters that differ."""
    recorded, given = found["parameters"], list(given)
    changes = [
        f"{word} {names}"
        for word, names in (
            ("without", [name for name in recorded if name not in given]),
            ("also with", [name for name in given if name not in recorded]),
        )
        if names
    ]
    return (
        f"store {root} holds features of checkpoint {checkpoint_id!r} differentiated with "
        f"respect to {len(recorded)} parameters; the model given has {len(given)} "
        f"({'; '.join(changes) or 'in another order'}), e.g. with another requires_grad: restore "
        "the trainable parameters, or featurize into a new store directory"
    )


def _sidecars(directory: Path) -> list[int]:
    """The indices of the shard sidecars in ``directory`` (none if it is absent), sorted."""
    names = sorted(os.listdir(directory)) if directory.is_dir() else []
    return [int(match[1]) for match in map(SIDECAR.fullmatch, names) if match]
