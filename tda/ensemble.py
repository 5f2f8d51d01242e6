"""Independently trained models for checkpoint ensembles (TRAK's M models), resumable on disk.

Model ``s`` is trained from seed ``s`` into ``root/seed-<s>/``; its checkpoints enter a feature
store as ``seed-<s>.<checkpoint id>`` (e.g. ``seed-3.epoch-0030``). A model whose final checkpoint
exists is not trained again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from tda.checkpoints import Checkpoint, list_checkpoints, load_checkpoint
from tda.data.examples import Examples
from tda.models import build_model
from tda.task import ClassificationTask, Task
from tda.training import TrainConfig, train


def member_directory(root: str | os.PathLike, seed: int) -> Path:
    """Where ensemble member ``seed`` keeps its checkpoints."""
    return Path(root) / f"seed-{seed}"


def store_id(seed: int, checkpoint: Checkpoint) -> str:
    """The id of a member's checkpoint in a feature store."""
    return f"seed-{seed}.{checkpoint.checkpoint_id}"


def _finished(directory: Path, config: TrainConfig) -> list[Checkpoint] | None:
    if not directory.is_dir():
        return None
    saved = list_checkpoints(directory)
    if saved and saved[-1].epoch == config.epochs:
        return saved
    return None


def train_ensemble(
    model_factory: Callable[[], nn.Module],
    data: Examples,
    config: TrainConfig,
    seeds: Iterable[int],
    root: str | os.PathLike,
    *,
    task: Task = ClassificationTask(),
    progress: bool = True,
) -> dict[int, list[Checkpoint]]:
    """Train one model per seed (skipping finished ones); returns each seed's checkpoints."""
    members = {}
    for seed in tqdm(list(seeds), desc="train models", disable=not progress):
        directory = member_directory(root, seed)
        saved = _finished(directory, config)
        if saved is None:
            model = build_model(model_factory, seed)
            saved = train(
                model, data, config, seed=seed, task=task, checkpoint_dir=directory
            ).checkpoints
        members[seed] = saved
    return members


def load_member(model_factory: Callable[[], nn.Module], checkpoint: Checkpoint) -> nn.Module:
    """A fresh model holding ``checkpoint``'s weights (verified against its fingerprint)."""
    return load_checkpoint(checkpoint, model_factory()).eval()
