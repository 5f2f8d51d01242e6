"""What the checkpoint-replaying methods (TracIn, Source) share: a model rebuilt at a
checkpoint, examples moved to its device, each checkpoint counted once, and training-gradient
products streamed chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from tda.checkpoints import Checkpoint, load_fresh_model
from tda.data.examples import Examples
from tda.grads import ParameterNames, iter_per_sample_gradients
from tda.task import Task

ModelFactory = Callable[[], nn.Module]


def load_model(model_factory: ModelFactory, checkpoint: Checkpoint) -> nn.Module:
    """A fresh ``model_factory()`` holding the weights of ``checkpoint``, in their dtype."""
    return load_fresh_model(model_factory, checkpoint)


def on_model_device(model: nn.Module, examples: Examples) -> Examples:
    """``examples`` on the device of ``model``'s first parameter."""
    return examples.to(next(model.parameters()).device)


def check_listed_once(checkpoints: Sequence[Checkpoint]) -> None:
    """Raise ``ValueError`` naming a checkpoint (the same file) listed more than once."""
    seen: set[Path] = set()
    for checkpoint in checkpoints:
        path = Path(checkpoint.path).resolve()
        if path in seen:
            raise ValueError(
                f"checkpoint {checkpoint.checkpoint_id!r} ({path}) is listed more than once; "
                "each checkpoint's steps are counted once"
            )
        seen.add(path)


def streamed_products(
    model: nn.Module,
    task: Task,
    left: Tensor,
    train: Examples,
    *,
    parameters: ParameterNames,
    chunk_size: int,
) -> Tensor:
    r"""``left @ Gᵀ`` (``[q, n]``, returned in float64) for per-sample training loss gradients
    :math:`G = [\nabla\ell(z_i)]_i`, computed ``chunk_size`` examples at a time."""
    train = on_model_device(model, train)
    result = torch.empty(left.shape[0], len(train), dtype=torch.float64, device=left.device)
    chunks = iter_per_sample_gradients(
        model,
        task,
        train.inputs,
        train.targets,
        function="loss",
        parameters=parameters,
        chunk_size=chunk_size,
    )
    start = 0
    for gradients in chunks:
        block = left.to(gradients.dtype) @ gradients.T  # in the gradients' dtype; summed in float64
        result[:, start : start + len(gradients)] = block.double()
        start += len(gradients)
    return result
