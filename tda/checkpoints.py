"""Checkpoints on disk: safetensors weights plus a JSON record of where training was.

Source and TracIn need, for each checkpoint, the learning rate and the number of optimiser steps
taken since the previous checkpoint (a "segment"); the trainer records both. Loading never executes
code (safetensors), and a loaded state is checked against its recorded fingerprint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from tda.atomic import make_directories, write_bytes_atomic
from tda.fingerprint import model_fingerprint
from tda.shards import check_name


@dataclass(frozen=True)
class Checkpoint:
    """One saved model state and the training position it was saved at.

    Attributes:
        checkpoint_id: name, unique within its directory (e.g. ``"epoch-0030"``).
        path: the safetensors file.
        step: optimiser steps taken since the start of training.
        epoch: epochs completed.
        learning_rate: learning rate in force when the checkpoint was saved.
        segment_steps: steps since the previous checkpoint (or the start); 0 for a checkpoint of
            the starting parameters (``TrainConfig(save_initial=True)``), which is listed first.
        segment_learning_rate: mean learning rate over those steps (0 when there are none).
        fingerprint: :func:`tda.fingerprint.model_fingerprint` of the saved state.
    """

    checkpoint_id: str
    path: Path
    step: int
    epoch: int
    learning_rate: float
    segment_steps: int
    segment_learning_rate: float
    fingerprint: str


def save_checkpoint(directory: str | os.PathLike, checkpoint_id: str, model: nn.Module, **position):
    """Write ``model``'s state and its training ``position`` (Checkpoint fields) atomically;
    a weight shared by several modules (tied weights) is saved under each of its names.

    Raises:
        ValueError: a ``checkpoint_id`` that is not a plain file name (e.g. ``"../x"``).
    """
    check_name("checkpoint id", checkpoint_id)
    directory = Path(directory)
    make_directories(directory)
    state = savable_state(model)
    weights = directory / f"{checkpoint_id}.safetensors"
    write_bytes_atomic(weights, save(state))
    checkpoint = Checkpoint(
        checkpoint_id=checkpoint_id, path=weights, fingerprint=model_fingerprint(state), **position
    )
    record = {**asdict(checkpoint), "path": weights.name}
    text = json.dumps(record, indent=2)
    write_bytes_atomic(directory / f"{checkpoint_id}.json", text.encode())
    return checkpoint


def _read_record(record_path: Path) -> Checkpoint:
    record = json.loads(record_path.read_text())
    record["path"] = record_path.parent / record["path"]
    return Checkpoint(**record)


def list_checkpoints(directory: str | os.PathLike) -> list[Checkpoint]:
    """All checkpoints saved in ``directory``, in training order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    checkpoints = [_read_record(p) for p in directory.glob("*.json") if not p.name.startswith(".")]
    return sorted(checkpoints, key=lambda c: (c.step, c.checkpoint_id))


def savable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state as safetensors takes it: a contiguous CPU copy per name (it refuses
    tensors that share memory: tied weights, views), each saved under all of its names."""
    return {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }


def check_state_fits(source: str, state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Refuse a loaded ``state`` whose names, shapes or dtypes differ from ``model``'s, before any
    weight is copied (``load_state_dict`` copies what fits before it reports what does not).

    Raises:
        ValueError: naming ``source`` and every entry that differs.
    """
    layout = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    found = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    differences = [
        f"{key}: file has {found.get(key, '(absent)')}, model {layout.get(key, '(absent)')}"
        for key in sorted(layout.keys() | found.keys())
        if found.get(key) != layout.get(key)
    ]
    if differences:
        raise ValueError(f"{source} does not fit this model: {'; '.join(differences)}")


def read_checkpoint(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """``checkpoint``'s state, verified against its recorded fingerprint.

    Raises:
        ValueError: the file does not match its record.
    """
    state = load_file(str(checkpoint.path))
    if model_fingerprint(state) != checkpoint.fingerprint:
        raise ValueError(f"checkpoint {checkpoint.path} does not match its recorded fingerprint")
    return state


def load_checkpoint(
    checkpoint: Checkpoint, model: nn.Module, state: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """Load ``checkpoint`` into ``model`` (same architecture and dtype) after verifying its
    fingerprint; ``model`` is left unchanged when anything does not match.

    Args:
        state: the checkpoint's state if already read (:func:`read_checkpoint`).

    Raises:
        ValueError: the architecture or dtype does not match or the file does not match its record.
    """
    state = read_checkpoint(checkpoint) if state is None else state
    check_state_fits(f"checkpoint {checkpoint.path}", state, model)
    model.load_state_dict(state, strict=True)
    return model


def load_fresh_model(model_factory: Callable[[], nn.Module], checkpoint: Checkpoint) -> nn.Module:
    """A new ``model_factory()`` holding ``checkpoint``'s weights (verified against its
    fingerprint), in the floating dtype they were saved in: a model trained on float64 data
    comes back float64 although the factory builds float32."""
    state = read_checkpoint(checkpoint)
    model = model_factory()
    floating = {value.dtype for value in state.values() if value.is_floating_point()}
    if len(floating) == 1:
        model = model.to(floating.pop())
    return load_checkpoint(checkpoint, model, state)
