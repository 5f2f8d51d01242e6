"""A deterministic minibatch trainer that records checkpoints for Source and TracIn.

The same (model initialisation, data, config, seed) gives bitwise the same weights on CPU: the
shuffling order comes from a generator seeded by ``seed`` and any other randomness (dropout) runs
under a forked, seeded global RNG, so the caller's random state is left untouched.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tda.arguments import check_positive_int
from tda.checkpoints import Checkpoint, list_checkpoints, save_checkpoint
from tda.data.examples import (
    Examples,
    as_examples,
    check_finite_inputs,
    check_input_dtype,
    first_flagged_example,
)
from tda.device import seeded_rng, to_device_of
from tda.fingerprint import config_fingerprint
from tda.grads import evaluation_mode
from tda.task import (
    IGNORE_INDEX,
    ClassificationTask,
    ClassLogit,
    LanguageModelingTask,
    Task,
    outside_classes,
)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        epochs: passes over the training data.
        batch_size: examples per optimiser step (the last batch of an epoch may be smaller).
        optimizer: builds the optimiser from the parameters (default Adam, lr 3e-3).
        scheduler: optional learning-rate schedule, stepped once per epoch.
        checkpoints: how many checkpoints to save, evenly spaced in epochs; the last one is the
            final model.
        save_initial: also save the starting parameters as ``epoch-0000`` (step 0, epoch 0,
            ``segment_steps`` 0 and ``segment_learning_rate`` 0: it closes no steps), before any
            step. Source needs it to take each segment's gradients where its steps start
            (``Source(gradients="start")``), which is exact from an arbitrary start.
    """

    epochs: int = 30
    batch_size: int = 64
    optimizer: OptimizerFactory = field(default=partial(torch.optim.Adam, lr=3e-3))
    scheduler: SchedulerFactory | None = None
    checkpoints: int = 1
    save_initial: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoints"):
            check_positive_int(name, getattr(self, name))
        if not 1 <= self.checkpoints <= self.epochs:
            raise ValueError(f"checkpoints must be in [1, epochs={self.epochs}]")

    def checkpoint_epochs(self) -> list[int]:
        """Epochs (1-based) after which a checkpoint is saved."""
        return sorted(
            {round(self.epochs * (i + 1) / self.checkpoints) for i in range(self.checkpoints)}
        )


# TrainConfig fields that choose which checkpoints are written, never the trained weights (saving
# only reads the parameters; tests/test_train.py checks the weights stay bitwise the same)
CHECKPOINT_SETTINGS = ("checkpoints", "save_initial")


def weight_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (TrainConfig's fields by name, e.g. a Hydra ``train`` config as a dict) without
    :data:`CHECKPOINT_SETTINGS`: what decides the trained weights. Stores of retrained outputs are
    keyed by it, so that saving more or fewer checkpoints does not invalidate them."""
    return {key: value for key, value in settings.items() if key not in CHECKPOINT_SETTINGS}


def recorded_recipe(
    recipe: Mapping[str, Any], recorded: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The recipe to open a store of retrained outputs with: ``recorded``, the store's own, where
    it was made before :func:`weight_settings` and differs from ``recipe`` (its ``"train"`` entry
    already reduced by it) only in its ``"train"`` entry's :data:`CHECKPOINT_SETTINGS`, so that
    such a store still opens; else ``recipe`` (``recorded`` is ``None``: no store yet)."""
    train = None if recorded is None else recorded.get("train")
    if not isinstance(train, Mapping):
        return dict(recipe)
    reduced = {**recorded, "train": weight_settings(train)}
    return dict(recorded if config_fingerprint(reduced) == config_fingerprint(recipe) else recipe)


@dataclass(frozen=True)
class TrainResult:
    """The trained model and the checkpoints written (empty without a checkpoint directory)."""

    model: nn.Module
    checkpoints: list[Checkpoint]


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _epoch(
    model, task, data, config, optimizer, generator, keep, *, epoch: int, first_step: int
) -> tuple[int, float]:
    order = torch.randperm(len(data), generator=generator).to(data.inputs.device)
    steps, lr_sum = 0, 0.0
    for start in range(0, len(data), config.batch_size):
        batch = order[start : start + config.batch_size]
        if keep is not None:
            batch = batch[keep[batch]]
            if len(batch) == 0:  # every example of this batch was removed: no step
                continue
        inputs, targets = to_device_of(model, data.inputs[batch], data.targets[batch])
        loss = task.loss(model(inputs), targets).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {float(loss.detach())} at step {first_step + steps + 1} "
                f"(epoch {epoch}): the run diverged, or a target lies outside the model's classes"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr_sum += _current_lr(optimizer)
        optimizer.step()
        steps += 1
    return steps, lr_sum


def _checked_keep(keep, size: int, device: torch.device) -> Tensor | None:
    if keep is None:
        return None
    keep = torch.as_tensor(np.asarray(keep))
    if keep.dtype != torch.bool or keep.shape != (size,):
        raise ValueError(
            f"keep must be a boolean mask of shape ({size},), got {keep.dtype} {tuple(keep.shape)}"
        )
    if not bool(keep.any()):
        raise ValueError("keep removes every example: cannot train on an empty data set")
    return keep.to(device)


def _check_trainable(model: nn.Module, data: Examples, task: Task, keep, seed: int) -> None:
    """Refuse data that training would fail on only at some step, or in torch's terms: inputs
    holding NaN or infinity, inputs the model cannot read, and targets outside its classes (for
    the tasks whose targets are class indices). Only the examples trained on (``keep``) are
    checked; the model reads the first two examples once."""
    check_finite_inputs(data.inputs, keep)
    classes = _output_width(model, data.inputs, seed)
    if isinstance(task, ClassificationTask | ClassLogit) and data.targets.dim() == 1:
        _check_classes(data.targets, classes, keep, ignored=None)
    elif isinstance(task, LanguageModelingTask):
        _check_classes(data.targets, classes, keep, ignored=IGNORE_INDEX)


def _output_width(model: nn.Module, inputs: Tensor, seed: int) -> int:
    """The number of outputs (classes, vocabulary) of the model on the first examples, read in
    eval mode without gradients under a forked RNG, so that dropout draws nothing from the
    training's random streams and every module keeps its mode (the weights are bitwise those of
    training without this look).

    Raises:
        ValueError: the model cannot read the input (torch's error, e.g. of shapes, is chained).
    """
    (first,) = to_device_of(model, inputs[:2])  # two: batch statistics need more than one
    try:
        with seeded_rng(seed), torch.no_grad(), evaluation_mode(model):
            logits = model(first)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, IndexError) as error:
        raise ValueError(
            f"the model cannot read the data's inputs (each of shape {tuple(inputs.shape[1:])}, "
            f"{inputs.dtype}): on its first examples it failed with {type(error).__name__}: "
            f"{error}; "
            "build the model for these inputs (e.g. its in_features, or for token ids its "
            "vocabulary)"
        ) from error
    return int(logits.shape[-1])


def _check_classes(targets: Tensor, classes: int, keep: Tensor | None, ignored: int | None) -> None:
    """Refuse a target (other than ``ignored`` positions) that is not a class ``0..classes-1``."""
    outside = outside_classes(targets, classes, ignored)
    row = first_flagged_example(outside, keep)
    if row is None:
        return
    position = int(outside[row].reshape(-1).nonzero()[0, 0]) if targets.dim() > 1 else None
    value = targets[row].reshape(-1)[position or 0].item()
    where = f"of example {row}" if position is None else f"at position {position} of example {row}"
    also = f", nor {ignored} (an ignored position)" if ignored is not None else ""
    raise ValueError(
        f"target {value} {where} lies outside the model's classes 0..{classes - 1} (its "
        f"{classes} outputs{also}); map the labels to class indices first (e.g. -1/+1 to 0/1), "
        "or build the model with as many outputs as there are classes"
    )


def _check_no_stale_checkpoints(directory: Path, config: TrainConfig) -> None:
    """Refuse a checkpoint directory holding checkpoints this run will not overwrite: another
    run's, which :func:`~tda.checkpoints.list_checkpoints` would mix with this run's (its last
    one taken for the final model)."""
    if not directory.is_dir():
        return
    written = {f"epoch-{epoch:04d}" for epoch in config.checkpoint_epochs()}
    written |= {"epoch-0000"} if config.save_initial else set()
    stale = sorted({c.checkpoint_id for c in list_checkpoints(directory)} - written)
    if stale:
        raise ValueError(
            f"checkpoint directory {directory} holds checkpoints {stale} that this run will not "
            "overwrite (another run's): they would be listed among this run's; use an empty "
            "directory, or delete them"
        )


def _save_initial(checkpoint_dir, model: nn.Module, optimizer) -> Checkpoint:
    """The starting parameters as a checkpoint that closes no steps (see ``save_initial``)."""
    return save_checkpoint(
        checkpoint_dir,
        "epoch-0000",
        model,
        step=0,
        epoch=0,
        learning_rate=_current_lr(optimizer),
        segment_steps=0,
        segment_learning_rate=0.0,
    )


def train(
    model: nn.Module,
    data: Any,
    config: TrainConfig = TrainConfig(),
    *,
    seed: int = 0,
    task: Task = ClassificationTask(),
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = False,
    keep: Tensor | np.ndarray | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data`` and save checkpoints to ``checkpoint_dir`` if given.

    Args:
        data: ``Examples``, or anything :func:`tda.as_examples` reads (e.g. ``(X, y)`` arrays);
            floating inputs must have the model's dtype (see :func:`check_input_dtype`).
        keep: optional ``[n]`` boolean mask: train on the examples of ``data`` where it is True,
            in the minibatches of training on all of ``data`` with the same seed, each without
            its removed examples (a batch left empty is skipped). Runs that remove different
            examples then share every other batch (common random numbers), so comparing them
            measures the removal rather than a reshuffle; with ``data.subset(keep)`` instead,
            any removal changes every minibatch. All True trains exactly as without ``keep``.

    Raises:
        ValueError: empty data, inputs of another floating dtype than the model, or a ``keep``
            mask that is not ``[n]`` booleans or keeps nothing; before any step (and any
            checkpoint): inputs holding NaN or infinity, inputs the model cannot read (another
            number of features), or, for :class:`ClassificationTask`, :class:`ClassLogit` and
            :class:`LanguageModelingTask`, a target outside the model's outputs ``0..C-1``
            (other than :data:`IGNORE_INDEX` for a language model). Each names the example.
            And a ``checkpoint_dir`` holding checkpoints this run will not overwrite (another
            run's: they would be listed with this run's).
        FloatingPointError: the loss became NaN or infinite (the run diverged, or another task's
            targets do not fit the model).
    """
    data = as_examples(data)
    keep = _checked_keep(keep, len(data), data.inputs.device)
    if len(data) == 0:
        raise ValueError("cannot train on an empty data set")
    check_input_dtype(model, data.inputs)
    seed = operator.index(seed)  # a numpy integer (np.arange seeds): Generator takes only int
    _check_trainable(model, data, task, keep, seed)
    if checkpoint_dir is not None:
        _check_no_stale_checkpoints(Path(checkpoint_dir), config)
    generator = torch.Generator().manual_seed(seed)
    optimizer = config.optimizer(model.parameters())
    scheduler = config.scheduler(optimizer) if config.scheduler else None
    save_after = set(config.checkpoint_epochs())
    checkpoints, step, segment_steps, segment_lr = [], 0, 0, 0.0
    if checkpoint_dir is not None and config.save_initial:
        checkpoints.append(_save_initial(checkpoint_dir, model, optimizer))
    model.train()
    with seeded_rng(seed):
        for epoch in tqdm(range(1, config.epochs + 1), desc="train", disable=not progress):
            steps, lr_sum = _epoch(
                model, task, data, config, optimizer, generator, keep, epoch=epoch, first_step=step
            )
            step, segment_steps, segment_lr = (
                step + steps,
                segment_steps + steps,
                segment_lr + lr_sum,
            )
            if scheduler is not None:
                scheduler.step()
            if checkpoint_dir is not None and epoch in save_after:
                checkpoints.append(
                    save_checkpoint(
                        checkpoint_dir,
                        f"epoch-{epoch:04d}",
                        model,
                        step=step,
                        epoch=epoch,
                        learning_rate=_current_lr(optimizer),
                        segment_steps=segment_steps,
                        segment_learning_rate=segment_lr / segment_steps,
                    )
                )
                segment_steps, segment_lr = 0, 0.0
    model.eval()
    return TrainResult(model=model, checkpoints=checkpoints)


def train_on(
    model: nn.Module,
    data: Examples,
    keep: np.ndarray,
    config: TrainConfig,
    seed: int,
    task: Task,
    aligned_batches: bool,
) -> TrainResult:
    """Train on the examples of ``data`` where ``keep`` is True: in the full run's minibatches
    (``aligned_batches``, see :func:`train`'s ``keep``) or reshuffled as a data set of their own."""
    if aligned_batches:
        return train(model, data, config, seed=seed, task=task, keep=keep)
    return train(model, data.subset(keep), config, seed=seed, task=task)
