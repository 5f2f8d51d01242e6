"""Featurization into a :class:`~tda.store.FeatureStore`: sharded, resumable, fingerprint-checked.

The examples of a split are cut into shards of ``shard_size`` rows. Each shard is computed and
written atomically on its own, so a killed run resumes at the first missing shard, and separate
processes (Hydra multirun jobs) can each compute a subset of the shards of the same store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from tda.data.examples import Examples
from tda.features.gradient import FeatureBatch
from tda.fingerprint import model_fingerprint
from tda.projection import derive_seed
from tda.store import FeatureStore


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
    examples: Examples,
    featurizer: Featurizer,
    store: FeatureStore,
    *,
    checkpoint_id: str,
    split: str,
    shards: Iterable[int] | None = None,
    storage_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> int:
    """Compute and store the features of ``examples`` for one checkpoint; returns shards written.

    The projection seed is derived from (featurizer seed, ``checkpoint_id``), so any process that
    computes a shard of this checkpoint uses the same projection. Shards already complete are
    skipped. Features are stored in the model's dtype unless ``storage_dtype`` is given (e.g.
    ``torch.float16`` halves the store; methods accumulate in float32 or wider).

    Raises:
        StoreMismatchError: the store holds another model under ``checkpoint_id`` or other data
            under ``split``.
        ValueError: empty examples, a shard index out of range, or non-finite gradients.
    """
    if len(examples) == 0:
        raise ValueError(f"split '{split}' has no examples to featurize")
    shard_size = store.config["shard_size"]
    store.register_checkpoint(checkpoint_id, model_fingerprint(model))
    store.declare_split(split, len(examples), examples.fingerprint())
    seeded = featurizer.with_seed(derive_seed(featurizer.seed, checkpoint_id))
    total = shard_count(len(examples), shard_size)
    wanted = _validated_shards(shards, total)
    todo = [index for index in wanted if not store.has_shard(checkpoint_id, split, index)]
    for index in tqdm(todo, desc=f"featurize {checkpoint_id}/{split}", disable=not progress):
        start = index * shard_size
        batch = seeded(model, *_rows(examples, start, shard_size))
        dtype = storage_dtype or batch.features.dtype
        arrays = {
            "features": batch.features.detach().to("cpu", dtype).numpy(),
            "out_to_loss": batch.out_to_loss.detach().cpu().numpy(),
        }
        store.write_shard(checkpoint_id, split, index, start, arrays)
    return len(todo)


def _rows(examples: Examples, start: int, size: int):
    return examples.inputs[start : start + size], examples.targets[start : start + size]


def _validated_shards(shards: Iterable[int] | None, total: int) -> list[int]:
    if shards is None:
        return list(range(total))
    wanted = sorted(set(int(s) for s in shards))
    bad = [s for s in wanted if not 0 <= s < total]
    if bad:
        raise ValueError(f"shard indices {bad} are out of range: this split has {total} shards")
    return wanted
