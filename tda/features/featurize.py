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
from tda.dtypes import compute_dtype
from tda.features.gradient import FeatureBatch
from tda.fingerprint import model_fingerprint
from tda.grads import NonFiniteGradientError, non_finite_example
from tda.projection import derive_seed
from tda.shards import dtype_name, encode
from tda.store import FeatureStore, StoreMismatchError

STORAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes a store may keep features in (``featurize(storage_dtype=...)``)."""


class Featurizer(Protocol):
    """Maps (model, examples) to per-example features; see :class:`GradientFeaturizer`.

    A featurizer may also have ``parameter_names(model) -> list[str]``: the names of the
    parameters whose gradients its features project, resolved for ``model`` (e.g. the trainable
    ones). :func:`featurize` records them per checkpoint and refuses another set later.
    """

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
    shards: Mapping[str, Iterable[int] | int | None] | None = None,
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
        shards: per split, the shard indices (or one index) this call computes (missing split
            or ``None``: all), so separate processes can share a checkpoint's work.
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
            another model under ``checkpoint_id`` or features of it that differentiate other
            parameters (another ``requires_grad``; see
            :meth:`~tda.store.FeatureStore.register_checkpoint`), other data under a split's
            name, or keeps its features in another dtype than ``storage_dtype`` gives.
        ValueError: a ``storage_dtype`` not in :data:`STORAGE_DTYPES`, an empty split, inputs
            of another floating dtype than the model, ``shards`` naming a split not in
            ``splits``, a string of shard indices, a shard index out of range, non-finite
            gradients, or features beyond ``storage_dtype``'s range (all but the last two
            before any work).
    """
    splits = {name: as_examples(examples) for name, examples in splits.items()}
    wanted = _wanted_shards(splits, shards or {}, store.config["shard_size"])
    for examples in splits.values():
        check_input_dtype(model, examples.inputs)
    _check_store_fits(store, featurizer)
    if storage_dtype is not None and storage_dtype not in STORAGE_DTYPES:
        choices = ", ".join(map(str, STORAGE_DTYPES))
        raise ValueError(f"storage_dtype must be one of {choices}, got {storage_dtype}")
    dtype = storage_dtype or _model_compute_dtype(model)
    _refuse_other_dtype(store, dtype, storage_dtype)
    parameters = differentiated_parameters(featurizer, model)
    store.register_checkpoint(checkpoint_id, model_fingerprint(model), parameters)
    for split, examples in splits.items():  # every split's data is checked before any work
        store.declare_split(split, len(examples), examples.fingerprint())
    seeded = featurizer.with_seed(derive_seed(featurizer.seed, checkpoint_id))
    return sum(
        _featurize_split(
            model, examples, seeded, store, checkpoint_id, split, wanted[split], dtype, progress
        )
        for split, examples in splits.items()
    )


def _wanted_shards(
    splits: Mapping[str, Examples], shards: Mapping[str, Any], shard_size: int
) -> dict[str, list[int]]:
    """Per split, the shard indices ``shards`` asks for (default: all), checked before any work."""
    empty = [name for name, examples in splits.items() if len(examples) == 0]
    if not splits or empty:
        raise ValueError(f"splits {empty or '{}'} have no examples to featurize")
    unknown = sorted(set(shards) - set(splits))
    if unknown:  # a misspelt split would silently compute every shard of the real one
        raise ValueError(f"shards name splits {unknown} that are not among {sorted(splits)}")
    return {
        split: _validated_shards(shards.get(split), shard_count(len(examples), shard_size), split)
        for split, examples in splits.items()
    }


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


def differentiated_parameters(featurizer: Featurizer, model: nn.Module) -> list[str] | None:
    """The names of the parameters whose gradients ``featurizer``'s features project for
    ``model`` (its ``parameter_names``), or None for a featurizer that does not say."""
    method = getattr(featurizer, "parameter_names", None)
    names = None if method is None else method(model)  # a LogitFeaturizer passes its base's on
    return None if names is None else list(names)


def _model_compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype features of ``model`` are computed in (:func:`tda.dtypes.compute_dtype` of its
    first floating-point parameter's)."""
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
    model, examples, seeded, store, checkpoint_id, split, wanted, dtype, progress
) -> int:
    """Compute and write the missing shards of ``split`` among those ``wanted``, features as
    ``dtype`` (checked against the store's before the call)."""
    shard_size = store.config["shard_size"]
    todo = [index for index in wanted if not store.has_shard(checkpoint_id, split, index)]
    for index in tqdm(todo, desc=f"featurize {checkpoint_id}/{split}", disable=not progress):
        start = index * shard_size
        batch = _shard_features(seeded, model, examples, start, shard_size, split)
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


def _shard_features(seeded, model, examples, start: int, size: int, split: str) -> FeatureBatch:
    """The features of rows ``[start, start + size)``; a non-finite gradient is named by its
    example's index in ``split``, not its row in the shard."""
    try:
        return seeded(model, *_rows(examples, start, size))
    except NonFiniteGradientError as error:
        if error.example is None:
            raise
        where = f" of split {split!r}"
        raise non_finite_example(error.quantity, start + error.example, where) from None


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


def _validated_shards(shards: Iterable[int] | int | None, total: int, split: str) -> list[int]:
    if shards is None:
        return list(range(total))
    if isinstance(shards, str | bytes):  # would be read as its characters
        raise ValueError(f"shards[{split!r}] must be shard indices, got {shards!r}")
    if not isinstance(shards, Iterable):  # one index
        shards = [shards]
    wanted = sorted(set(int(s) for s in shards))
    bad = [s for s in wanted if not 0 <= s < total]
    if bad:
        raise ValueError(
            f"shard indices {bad} are out of range: split '{split}' has {total} shards"
        )
    return wanted
