"""Featurization into a :class:`~tda.store.FeatureStore`: sharded, resumable, fingerprint-checked.

The examples of a split are cut into shards of ``shard_size`` rows. Each shard is computed and
written atomically on its own, so a killed run resumes at the first missing shard, and separate
processes (Hydra multirun jobs) can each compute a subset of the shards of the same store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tda.data.examples import Examples, as_examples, check_input_dtype
from tda.features.gradient import FeatureBatch
from tda.fingerprint import model_fingerprint
from tda.layer_capture import compute_dtype
from tda.projection import derive_seed
from tda.shards import dtype_name, encode
from tda.store import FeatureStore, StoreMismatchError


class Featurizer(Protocol):
    """Maps (model, examples) to per-example features; see :class:`GradientFeaturizer`."""

    @property
    def seed(self) -> int: ...

    def with_seed(self, seed: int) -> Featurizer: ...

    def config(self) -> dict: ...

    def __call__(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
    ) -> FeatureBatch: ...


def store_config(featurizer: Featurizer, shard_size: int) -> dict:
    """The configuration a store is keyed by: the featurizer and the shard layout."""
    return {**featurizer.config(), "shard_size": shard_size}


def open_feature_store(
    root: str | os.PathLike, featurizer: Featurizer, shard_size: int = 1024
) -> FeatureStore:
    """Open (or create) the store for ``featurizer``; one made with other settings is refused."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    return FeatureStore.open(root, store_config(featurizer, shard_size))


def shard_count(n_examples: int, shard_size: int) -> int:
    """Number of shards a split of ``n_examples`` rows is cut into."""
    return -(-n_examples // shard_size)


def featurize(
    model: nn.Module,
    splits: Mapping[str, Any],
    featurizer: Featurizer,
    store: FeatureStore,
    *,
    checkpoint_id: str,
    shards: Mapping[str, Iterable[int] | None] | None = None,
    storage_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> int:
    """Compute and store the features of each split for one checkpoint; returns shards written.

    Args:
        model: the checkpoint's model.
        splits: split name -> examples, e.g. ``{"train": data.train, "test": queries}``:
            ``Examples`` or anything :func:`tda.as_examples` reads (e.g. ``(X, y)`` arrays), with
            floating inputs in the model's dtype (refused otherwise, before anything is written).
        featurizer: what to compute; reseeded once per checkpoint (see below).
        store: where to write; opened with :func:`open_feature_store` for this featurizer.
        checkpoint_id: the model's id in the store.
        shards: per split, the shard indices this call computes (missing split or ``None``: all),
            so separate processes can share a checkpoint's work.
        storage_dtype: ``torch.float16`` or ``torch.bfloat16`` halve the store (methods
            accumulate in float32 or wider; bfloat16 keeps float32's range, float16 stops
            at 65504: a shard beyond it is refused); default the model's compute dtype (float64
            for a float64 model, else float32), the dtype of the built-in featurizers' features.
            A store keeps its features in the dtype of their first write: another is refused
            before anything is computed.
        progress: show a progress bar per split.

    The projection seed is derived from (featurizer seed, ``checkpoint_id``), so any process that
    computes a shard of this checkpoint uses the same projection; the reseeded featurizer (and a
    dense projector's cached matrix) serves every split of the call. Complete shards are skipped.

    Raises:
        StoreMismatchError: the store was opened for a featurizer with other settings (a
            :class:`~tda.features.LogitFeaturizer` may add settings to its base's), holds
            another model under ``checkpoint_id`` or other data under a split's name, or keeps
            its features in another dtype than ``storage_dtype`` gives.
        ValueError: an empty split, inputs of another floating dtype than the model, ``shards``
            naming a split not in ``splits``, a shard index out of range, non-finite gradients,
            or features beyond ``storage_dtype``'s range.
    """
    splits = {name: as_examples(examples) for name, examples in splits.items()}
    empty = [name for name, examples in splits.items() if len(examples) == 0]
    if not splits or empty:
        raise ValueError(f"splits {empty or '{}'} have no examples to featurize")
    unknown = sorted(set(shards or {}) - set(splits))
    if unknown:  # a misspelt split would silently compute every shard of the real one
        raise ValueError(f"shards name splits {unknown} that are not among {sorted(splits)}")
    for examples in splits.values():
        check_input_dtype(model, examples.inputs)
    _check_store_fits(store, featurizer)
    dtype = storage_dtype or _model_compute_dtype(model)
    _refuse_other_dtype(store, dtype, storage_dtype)
    store.register_checkpoint(checkpoint_id, model_fingerprint(model))
    seeded = featurizer.with_seed(derive_seed(featurizer.seed, checkpoint_id))
    shards = shards or {}
    written = 0
    for split, examples in splits.items():
        store.declare_split(split, len(examples), examples.fingerprint())
        written += _featurize_split(
            model,
            examples,
            seeded,
            store,
            checkpoint_id,
            split,
            shards.get(split),
            dtype,
            progress,
        )
    return written


def _check_store_fits(store: FeatureStore, featurizer: Featurizer) -> None:
    """Refuse a featurizer whose settings differ from those ``store`` is keyed by.

    Every key of the store's config must hold the same value in the featurizer's; extra keys are
    allowed, so per-class features (:class:`~tda.features.LogitFeaturizer`) share their base's
    store.
    """
    given = json.loads(json.dumps(store_config(featurizer, store.config["shard_size"])))
    differing = [key for key, value in store.config.items() if given.get(key, ...) != value]
    if differing:
        details = "; ".join(
            f"{key!r}: store has {store.config[key]!r}, featurizer {given.get(key, '(absent)')!r}"
            for key in differing
        )
        raise StoreMismatchError(
            f"store {store.root} was opened for another featurizer ({details}); open the store "
            "with open_feature_store for this featurizer"
        )


def _model_compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype features of ``model`` are computed in: float64 for float64 parameters, else
    float32 (as :func:`tda.layer_capture.compute_dtype` and the projectors compute)."""
    parameter = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return compute_dtype(parameter or torch.float32)


def _refuse_other_dtype(
    store: FeatureStore, dtype: torch.dtype, storage_dtype: torch.dtype | None
) -> None:
    """Refuse to add features of ``dtype`` (what ``storage_dtype`` gives) to a store that keeps
    its features in another: one store holds one storage dtype (a mixed one cannot be read)."""
    kept, asked = store.array_dtype("features"), _sidecar_dtype(dtype)
    if kept is not None and kept != asked:
        given = "null" if storage_dtype is None else dtype_name(asked)
        raise StoreMismatchError(
            f"store {store.root} keeps its features as {dtype_name(kept)} (its first write "
            f"recorded it), but storage_dtype={given} would write {dtype_name(asked)}; featurize "
            f"with storage_dtype={dtype_name(kept)}, or into a new store directory"
        )


def _sidecar_dtype(dtype: torch.dtype) -> str:
    """How a store's sidecars name arrays of ``dtype`` (``"<f4"``, ``"bfloat16"``)."""
    return encode("features", torch.zeros(1, dtype=dtype))[1]


def _featurize_split(
    model, examples, seeded, store, checkpoint_id, split, shards, dtype, progress
) -> int:
    """Compute and write the missing ``shards`` of ``split``, features as ``dtype`` (checked
    against the store's before the call)."""
    shard_size = store.config["shard_size"]
    wanted = _validated_shards(shards, shard_count(len(examples), shard_size), split)
    todo = [index for index in wanted if not store.has_shard(checkpoint_id, split, index)]
    for index in tqdm(todo, desc=f"featurize {checkpoint_id}/{split}", disable=not progress):
        start = index * shard_size
        batch = seeded(model, *_rows(examples, start, shard_size))
        features = batch.features.detach().to("cpu", dtype)
        _check_storable(features, batch.features, split, index)
        if index == todo[0]:  # recorded at the first write (the store still guards a race)
            store.keep_array_dtype("features", _sidecar_dtype(dtype))
        arrays = {
            "features": _storable(features),
            "out_to_loss": _storable(batch.out_to_loss.detach().cpu()),  # bf16 for a bf16 model
        }
        store.write_shard(checkpoint_id, split, index, start, arrays)
    return len(todo)


def _storable(tensor: torch.Tensor) -> np.ndarray | torch.Tensor:
    """A CPU tensor as numpy, but a bfloat16 one as is: the store keeps it as raw words, as
    numpy has no bfloat16."""
    return tensor if tensor.dtype == torch.bfloat16 else tensor.numpy()


def _check_storable(stored: torch.Tensor, computed: torch.Tensor, split: str, index: int) -> None:
    """Refuse features that became infinite in the storage dtype (float16 tops out at 65504)."""
    if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(computed).all()):
        largest = float(computed.abs().max())
        raise ValueError(
            f"shard {index} of split '{split}' has features up to {largest:.4g}, beyond the range "
            f"of {stored.dtype}; store them as torch.bfloat16 or in full precision"
        )


def _rows(examples: Examples, start: int, size: int):
    return examples.inputs[start : start + size], examples.targets[start : start + size]


def _validated_shards(shards: Iterable[int] | None, total: int, split: str) -> list[int]:
    if shards is None:
        return list(range(total))
    wanted = sorted(set(int(s) for s in shards))
    bad = [s for s in wanted if not 0 <= s < total]
    if bad:
        raise ValueError(
            f"shard indices {bad} are out of range: split '{split}' has {total} shards"
        )
    return wanted
