"""Masks are data: ``{parameter name: bool tensor}``, ``True`` = the weight may change.

Saliency (SalUn), weight attribution (WAGLE) and pruning each produce such a dictionary; the
unlearning loop enforces it as a hard constraint. Parameters a mask does not name are fully
trainable. Enforcement does not trust the optimiser: gradients of frozen weights are zeroed before
each step (so momentum and Adam statistics never see them) and frozen weights are written back from
a snapshot after each step (so weight decay, momentum carried from elsewhere, or any other optimiser
rule cannot move them). Masked-out weights therefore stay bitwise unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tda.fingerprint import tensor_fingerprint

Mask = Mapping[str, Tensor]


def check_mask(model: nn.Module, mask: Mask) -> dict[str, Tensor]:
    """Validate ``mask`` against ``model`` and return it on the parameters' devices.

    Raises:
        ValueError: a name that is not a parameter of ``model``, a non-boolean tensor, or a shape
            that differs from its parameter's.
    """
    parameters = dict(model.named_parameters())
    checked = {}
    for name, trainable in mask.items():
        if name not in parameters:
            known = ", ".join(list(parameters)[:6])
            raise ValueError(f"mask names {name!r}, which is not a model parameter ({known}, ...)")
        if not isinstance(trainable, Tensor) or trainable.dtype != torch.bool:
            raise ValueError(f"mask entry {name!r} must be a bool tensor")
        if trainable.shape != parameters[name].shape:
            raise ValueError(
                f"mask entry {name!r} has shape {tuple(trainable.shape)} but the parameter has "
                f"shape {tuple(parameters[name].shape)}"
            )
        checked[name] = trainable.to(parameters[name].device)
    return checked


def intersect_masks(first: Mask | None, second: Mask | None) -> dict[str, Tensor] | None:
    """Weights trainable under both masks (a name missing from one mask is trainable there)."""
    if first is None or second is None:
        return None if first is None and second is None else dict(first or second)
    names = set(first) | set(second)
    return {
        name: first[name] & second[name]
        if name in first and name in second
        else (first[name] if name in first else second[name])
        for name in sorted(names)
    }


def describe_mask(mask: Mask | None) -> dict | None:
    """Audit summary: trainable and total weights named by the mask and a content fingerprint."""
    if mask is None:
        return None
    return {
        "trainable": int(sum(int(m.sum()) for m in mask.values())),
        "total": int(sum(m.numel() for m in mask.values())),
        "fingerprint": tensor_fingerprint(dict(mask)),
    }


@dataclass(frozen=True)
class PinnedWeights:
    """One parameter under a mask: its trainable entries and a snapshot of all its values."""

    parameter: nn.Parameter
    trainable: Tensor
    snapshot: Tensor


def pin(model: nn.Module, mask: Mask) -> list[PinnedWeights]:
    """Snapshot every parameter that has at least one masked-out weight."""
    parameters = dict(model.named_parameters())
    return [
        PinnedWeights(parameters[name], trainable, parameters[name].detach().clone())
        for name, trainable in check_mask(model, mask).items()
        if not bool(trainable.all())
    ]


def zero_frozen_gradients(pinned: list[PinnedWeights]) -> None:
    """Set the gradients of masked-out weights to exactly zero (``NaN`` included)."""
    for weights in pinned:
        if weights.parameter.grad is not None:
            weights.parameter.grad.masked_fill_(~weights.trainable, 0.0)


@torch.no_grad()
def restore_frozen(pinned: list[PinnedWeights]) -> None:
    """Write the snapshot back into masked-out weights, bit for bit."""
    for weights in pinned:
        weights.parameter.copy_(torch.where(weights.trainable, weights.parameter, weights.snapshot))


def fully_frozen(mask: Mask) -> set[str]:
    """Names of parameters the mask freezes entirely (they need not enter the optimiser)."""
    return {name for name, trainable in mask.items() if not bool(trainable.any())}
