r"""What an unlearning method is: an object with hyperparameters and one ``unlearn`` call.

Methods are thin. Most describe losses as :class:`~unlearn.loop.Phase` objects and hand them to
:func:`~unlearn.loop.unlearning_loop`; a method that computes a mask (saliency, pruning) intersects
it with the mask it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from tda.data.examples import Examples
from unlearn.loop import LoopConfig
from unlearn.masks import Mask
from unlearn.request import UnlearningRequest


def ascent_loop(epochs: int = 5) -> LoopConfig:
    """The loop the gradient-ascent methods default to: SGD, lr 1e-3, momentum 0.9, batch size
    64, ``epochs`` epochs (GA and GradDiff 5, NPO 10). Small: GA's and GradDiff's objectives are
    unbounded below, so the epochs and the learning rate are what stop them."""
    return LoopConfig(epochs=epochs, optimizer=partial(torch.optim.SGD, lr=1e-3, momentum=0.9))


def check_non_negative_finite(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``0 <= value < inf`` (a loss weight or
    strength; NaN is refused too, where it would read as a diverged run)."""
    if not 0 <= value < math.inf:
        raise ValueError(f"{name} must be non-negative and finite, got {value}")


@dataclass(frozen=True)
class ForgetSplit:
    r"""The training set split by a request into forget :math:`F` and retain :math:`R` sets.

    Attributes:
        forget: the examples of :math:`F`, in ascending index order.
        retain: the examples of :math:`R = S \setminus (F \cup F_{\text{earlier}})`, ascending.
        forget_indices: positions of :math:`F` in the training set, ``[|F|]``.
        retain_indices: positions of :math:`R` in the training set, ``[|R|]``.
        train_size: :math:`|S|`, the size of the training set the positions refer to.
        train_fingerprint: ``Examples.fingerprint()`` of :math:`S` (``None`` when unknown), so
            methods built for one training set (e.g. attribution-based predictors) can refuse
            another.
    """

    forget: Examples
    retain: Examples
    forget_indices: np.ndarray
    retain_indices: np.ndarray
    train_size: int | None = None
    train_fingerprint: str | None = None

    @classmethod
    def of(
        cls, train: Examples, request: UnlearningRequest, *, train_fingerprint: str | None = None
    ) -> ForgetSplit:
        """Split ``train`` (of ``request.train_size`` examples) as ``request`` says.

        ``train_fingerprint`` defaults to ``train.fingerprint()``; pass the fingerprint of the data
        as the caller has it when ``train`` is a device or dtype conversion of it.
        """
        if len(train) != request.train_size:
            raise ValueError(
                f"the request refers to a training set of {request.train_size} examples but "
                f"{len(train)} were given"
            )
        forget_indices = np.asarray(request.forget_indices, dtype=np.int64)
        retain_indices = request.retain_indices()
        return cls(
            train.subset(forget_indices),
            train.subset(retain_indices),
            forget_indices,
            retain_indices,
            request.train_size,
            train_fingerprint or train.fingerprint(),
        )


class UnlearningMethod(Protocol):
    """An unlearner: hyperparameters as attributes, the work in :meth:`unlearn`.

    Attributes:
        requires_forget_set: whether the method's losses need forget examples; for an empty
            forget set the :class:`~unlearn.Unlearner` returns the model unchanged when this is
            ``False`` and raises otherwise.
    """

    requires_forget_set: ClassVar[bool]

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        """Return the unlearned model; ``model`` is a copy the method may modify in place.

        Args:
            model: copy of the model to unlearn from.
            split: forget and retain examples (on the model's device and dtype).
            seed: seed of every random choice.
            mask: ``{name: bool tensor}`` of weights allowed to change; others stay bitwise equal.
        """
        ...
