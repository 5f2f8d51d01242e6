"""Independently trained models for checkpoint ensembles (TRAK's M models), resumable on disk.

Model ``s`` is trained from seed ``s`` into ``root/seed-<s>/``; its checkpoints enter a feature
store as ``seed-<s>.<checkpoint id>`` (e.g. ``seed-3.epoch-0030``). A model whose final checkpoint
exists is not trained again. Beside its directory, ``seed-<s>.recipe.json`` records what it is
trained on and how (the training set's fingerprint, the training settings, the task, the model's
architecture and initial weights); a member found under another recipe is refused rather than
reused, and :func:`check_member` refuses it to readers of the members (featurizing, scoring).
(Members trained before recipes were recorded have none, and are reused unchecked; a recipe
recorded before the model was is checked on what it records.)

The recipe is recorded before training starts: it claims the member, so that a second process
asked for the same member with other settings (a parallel job, or a rerun while the first is
still training) is refused rather than training into the same directory. A training that fails
before its first checkpoint (a refused input, a diverged loss) withdraws the claim it recorded,
so that a retry with corrected data or model is not refused for a member that was never trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from tda.atomic import write_bytes_atomic
from tda.checkpoints import Checkpoint, list_checkpoints, load_fresh_model
from tda.data.examples import Examples, as_examples
from tda.describe import describe, differences
from tda.fingerprint import model_fingerprint
from tda.models import build_model, model_dtype
from tda.task import ClassificationTask, Task
from tda.training import TrainConfig, train


def member_directory(root: str | os.PathLike, seed: int) -> Path:
    """Where ensemble member ``seed`` keeps its checkpoints."""
    return Path(root) / f"seed-{seed}"


def store_id(seed: int, checkpoint: Checkpoint) -> str:
    """The id of a member's checkpoint in a feature store."""
    return f"seed-{seed}.{checkpoint.checkpoint_id}"


def finished_checkpoints(directory: Path, config: TrainConfig) -> list[Checkpoint] | None:
    """The checkpoints in member ``directory`` if its last one is of epoch ``config.epochs``
    (the member finished training); ``None`` if the directory is missing, holds none, or stops
    earlier."""
    if not directory.is_dir():
        return None
    saved = list_checkpoints(directory)
    if saved and saved[-1].epoch == config.epochs:
        return saved
    return None


def train_ensemble(
    model_factory: Callable[[], nn.Module],
    data: Any,
    config: TrainConfig,
    seeds: Iterable[int],
    root: str | os.PathLike,
    *,
    task: Task = ClassificationTask(),
    progress: bool = True,
) -> dict[int, list[Checkpoint]]:
    """Train one model per seed (skipping finished ones); returns each seed's checkpoints.

    ``data`` is ``Examples`` or anything :func:`tda.as_examples` reads (e.g. ``(X, y)`` arrays);
    members are built in the dtype of its floating inputs (:func:`tda.models.model_dtype`).

    Raises:
        ValueError: a member directory records another training set, settings, task or model.
    """
    data = as_examples(data)
    members = {}
    recipe = _member_recipe(data, config, task)
    for seed in tqdm(list(seeds), desc="train models", disable=not progress):
        directory = member_directory(root, seed)
        model = build_model(model_factory, seed, dtype=model_dtype(data))
        member_recipe = {**recipe, "model": _model_recipe(model)}
        claimed = _claim(directory, member_recipe, config)
        saved = finished_checkpoints(directory, config)
        if saved is None:
            saved = _train_member(model, data, config, seed, task, directory, claimed=claimed)
            _record(directory, member_recipe)
        members[seed] = saved
    return members


def _train_member(
    model: nn.Module,
    data: Examples,
    config: TrainConfig,
    seed: int,
    task: Task,
    directory: Path,
    *,
    claimed: bool,
) -> list[Checkpoint]:
    """Train member ``seed`` into ``directory``. If training fails before any checkpoint is in
    ``directory``, the recipe this call recorded (``claimed``) is withdrawn: no member was trained
    under it, and it would refuse a retry with other data or model as a member trained with
    them. A recipe found there (another process's claim) is left alone."""
    try:
        return train(
            model, data, config, seed=seed, task=task, checkpoint_dir=directory
        ).checkpoints
    except BaseException:
        if claimed and not _saved_any(directory):
            _recipe_path(directory).unlink(missing_ok=True)
        raise


def _saved_any(directory: Path) -> bool:
    return directory.is_dir() and bool(list_checkpoints(directory))


def _member_recipe(data: Examples, config: TrainConfig, task: Task) -> dict[str, object]:
    """What a member is trained on and how, as JSON: the data's fingerprint, every training
    setting (:func:`tda.describe.describe`: factories by target and arguments) and the task."""
    return {"data": data.fingerprint(), "settings": describe(config), "task": describe(task)}


def _model_recipe(model: nn.Module) -> dict[str, str]:
    """The untrained member: its architecture (modules and their settings, so that e.g. another
    activation differs) and its initial weights' fingerprint (e.g. another seeding or width)."""
    return {"architecture": repr(model), "initial": model_fingerprint(model)}


def check_member(
    model_factory: Callable[[], nn.Module],
    data: Any,
    config: TrainConfig,
    seed: int,
    root: str | os.PathLike,
    *,
    task: Task = ClassificationTask(),
) -> list[Checkpoint]:
    """The checkpoints of member ``seed`` under ``root``, once checked to be the finished member
    that :func:`train_ensemble` trains from these same arguments.

    Its recipe is checked before its epochs, so a member trained with other settings is refused
    by the settings that differ, not as unfinished. A member trained before recipes were recorded
    is checked on its last checkpoint's epoch only.

    Raises:
        FileNotFoundError: the member was never trained (its directory does not exist).
        ValueError: its recipe records another training set, settings, task or model, or its
            last checkpoint is not of epoch ``config.epochs``.
    """
    data, directory = as_examples(data), member_directory(root, seed)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint directory {directory} does not exist: member {seed} was never trained; "
            "run experiments/train.py (with the same experiment=/overrides) first"
        )
    model = build_model(model_factory, seed, dtype=model_dtype(data))
    recipe = {**_member_recipe(data, config, task), "model": _model_recipe(model)}
    conflict = _recipe_conflict(directory, recipe)
    if conflict:
        raise ValueError(
            f"{directory} holds member {seed} trained with {conflict}; pass the experiment= and "
            "overrides it was trained with, or train new members into another workspace="
        )
    saved = list_checkpoints(directory)
    _check_finished(directory, seed, saved, config, recorded=_recipe_path(directory).is_file())
    return saved


def _check_finished(
    directory: Path, seed: int, saved: list[Checkpoint], config: TrainConfig, *, recorded: bool
) -> None:
    """Refuse a member whose last checkpoint is not of epoch ``config.epochs``: one trained under
    this recipe was interrupted; one without a recipe may have been trained for other epochs."""
    last = saved[-1].epoch if saved else None
    if last == config.epochs:
        return
    reached = (
        "it saved no checkpoint" if last is None else f"its last checkpoint is of epoch {last}"
    )
    if recorded:
        raise ValueError(
            f"member {seed} in {directory} has not finished training ({reached} of "
            f"{config.epochs}); run experiments/train.py (with the same experiment=/overrides) to "
            "finish it"
        )
    raise ValueError(
        f"member {seed} in {directory} (trained before recipes were recorded): {reached}, but "
        f"the settings ask {config.epochs} epochs (train.epochs); pass the experiment= (or "
        "train.epochs=) it was trained with, or finish it with experiments/train.py"
    )


def _recipe_path(directory: Path) -> Path:
    return directory.with_name(f"{directory.name}.recipe.json")


def _recipe_conflict(directory: Path, recipe: dict[str, object]) -> str | None:
    """How the recipe recorded for the member in ``directory`` differs from ``recipe``, e.g.
    ``"other settings ('settings.epochs': recorded 2, asked 30)"``; None when it agrees or none
    is recorded. Compared on the entries recorded: a recipe from before the model was recorded
    still opens."""
    path = _recipe_path(directory)
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    differing = sorted(key for key in recipe if key in found and found[key] != recipe[key])
    if not differing:
        return None
    compared = {key: found[key] for key in differing}, {key: recipe[key] for key in differing}
    changes = differences(*compared, names=("recorded", "asked"))
    return f"other {' and '.join(differing)} ({'; '.join(changes)})"


def _claim(directory: Path, recipe: dict[str, object], config: TrainConfig) -> bool:
    """Record ``recipe`` for a new member (True when this call recorded it); refuse a member
    recorded under another one."""
    _refuse_conflict(directory, recipe)
    if _recipe_path(directory).is_file() or finished_checkpoints(directory, config) is not None:
        return False  # a legacy member is not claimed: it is not vouched for after the fact
    if _record(directory, recipe):
        return True
    _refuse_conflict(directory, recipe)  # another process claimed it since the check above
    return False


def _refuse_conflict(directory: Path, recipe: dict[str, object]) -> None:
    conflict = _recipe_conflict(directory, recipe)
    if conflict:
        raise ValueError(_claimed_message(directory, conflict))


def _record(directory: Path, recipe: dict[str, object]) -> bool:
    """Record ``recipe`` for the member in ``directory`` unless one is (True when this call
    recorded it; published without replacing, so of two processes racing only one does): after
    training too, as a claim withdrawn meanwhile (by a process that failed training the same
    member) would leave the finished member unrecorded."""
    content = (json.dumps(recipe, indent=2) + "\n").encode()
    return write_bytes_atomic(_recipe_path(directory), content, replace=False)


def _claimed_message(directory: Path, conflict: str) -> str:
    """Why a member recorded under another recipe is refused, and what to do: by whether any of
    it was saved (a claim alone may be a member in training, or a killed run's)."""
    saved, path = list_checkpoints(directory) if directory.is_dir() else [], _recipe_path(directory)
    if not saved:
        return (
            f"{path} claims {directory} for a member to train with {conflict}, but no checkpoint "
            "of it was saved: another process may be training it now, or a run was killed before "
            f"its first checkpoint; if none is training it, delete {path} to train it with these "
            "settings, or use another directory"
        )
    return (
        f"{directory} holds a member trained with {conflict}; use another directory, or, unless "
        f"a process is training it now (its last checkpoint is of epoch {saved[-1].epoch}), "
        f"delete {directory} and {path} to train it anew with these settings"
    )


def load_member(model_factory: Callable[[], nn.Module], checkpoint: Checkpoint) -> nn.Module:
    """A fresh model holding ``checkpoint``'s weights (verified against its fingerprint), in the
    floating dtype they were saved in (a member trained on float64 data is float64), in eval
    mode."""
    return load_fresh_model(model_factory, checkpoint).eval()
