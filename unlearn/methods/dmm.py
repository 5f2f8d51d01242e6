r"""DMM: unlearning by datamodel matching (Georgiev et al. 2024, "Attribute-to-Delete").

A predictor (:mod:`unlearn.predictors`) gives the outputs :math:`\hat f(x)` the model would have
had it been trained without :math:`F`; a copy of the model is fine-tuned to match them on a matching
set :math:`M` made of :math:`F` repeated :math:`r = \max(1, \text{round}(\text{forget_copies}
/ |F|))` times (so small forget sets still get enough steps) and a random sample of :math:`R` of
``retain_multiple`` :math:`\times r|F|` points:

.. math:: \min_\theta \frac{1}{|M|}\sum_{x\in M} \tfrac{1}{C}\|f(x;\theta) - \hat f(x)\|^2 .

The targets are computed once, from the original model, before any update. With the oracle
predictor this is Oracle Matching (OM).

With ``matching="exact"`` and a predictor whose predictions are the original's outputs with its
final layer replaced (the head predictors' ``layer_edit``), that model makes the loss zero on
every point, the objective's global minimum: DMM returns it and fine-tunes nothing (the loop's
settings go unused).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from tda.arguments import check_positive_int
from tda.data.examples import Examples
from tda.outputs import logits_of
from tda.task import ClassificationTask
from unlearn.loop import LoopConfig, Phase, PhaseLoss, Progress, unlearning_loop
from unlearn.masks import Mask
from unlearn.methods.base import ForgetSplit, check_non_negative_finite
from unlearn.predictors.base import OutputPredictor
from unlearn.predictors.layer_edit import apply_layer_edit

Matching = Literal["fine_tune", "exact"]
MATCHING = ("fine_tune", "exact")


def _default_loop() -> LoopConfig:
    return LoopConfig(
        epochs=5,
        batch_size=64,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
        scheduler=partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.95),
    )


@dataclass(frozen=True)
class MatchingSet:
    """Positions in :math:`S` of the matching set, with each distinct point once.

    Attributes:
        positions: distinct training positions (forget points first, then the retain sample).
        repeats: how many times each position enters an epoch, ``[len(positions)]``.
    """

    positions: np.ndarray
    repeats: np.ndarray


def matching_set(
    split: ForgetSplit, forget_copies: int, retain_multiple: float, seed: int
) -> MatchingSet:
    """:math:`F` repeated to about ``forget_copies`` points and a seeded sample of :math:`R`."""
    forget_repeats = max(1, round(forget_copies / len(split.forget_indices)))
    wanted = int(round(retain_multiple * forget_repeats * len(split.forget_indices)))
    size = min(len(split.retain_indices), wanted)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(split.retain_indices), generator=generator)[:size].numpy()
    positions = np.concatenate([split.forget_indices, split.retain_indices[np.sort(chosen)]])
    repeats = np.concatenate(
        [np.full(len(split.forget_indices), forget_repeats), np.ones(size, dtype=np.int64)]
    )
    return MatchingSet(positions.astype(np.int64), repeats.astype(np.int64))


def _examples_at(split: ForgetSplit, positions: np.ndarray) -> Examples:
    """The training examples at ``positions`` (each must be a forget or retain position)."""
    order = np.concatenate([split.forget_indices, split.retain_indices])
    lookup = dict(zip(order.tolist(), range(len(order)), strict=True))
    rows = np.asarray([lookup[int(p)] for p in positions], dtype=np.int64)
    both = Examples(
        torch.cat([split.forget.inputs, split.retain.inputs]),
        torch.cat([split.forget.targets, split.retain.targets]),
    )
    return both.subset(rows)


def _matching_loss(targets: Tensor, labels: Tensor, output: str) -> PhaseLoss:
    """Mean squared error to ``targets``; a batch's ``targets`` field holds row numbers."""

    def loss(model: nn.Module, batches: Mapping[str, Examples], progress: Progress) -> Tensor:
        batch = batches["match"]
        rows = batch.targets
        logits = model(batch.inputs)
        if output == "margin":
            logits = ClassificationTask().output(logits, labels[rows])
        return functional.mse_loss(logits, targets[rows])

    return loss


def _check_target_shape(targets: Tensor, model: nn.Module, examples: Examples, output: str):
    """Refuse predicted outputs of another shape than the model's (MSE would broadcast them)."""
    classes = logits_of(model, examples.subset([0])).shape[1:]
    expected = (len(examples), *classes) if output == "logits" else (len(examples),)
    if tuple(targets.shape) != expected:
        raise ValueError(
            f"the predictor gave targets of shape {tuple(targets.shape)} for {output!r} outputs "
            f"of {len(examples)} matching points; expected {expected}"
        )


@dataclass(frozen=True)
class DatamodelMatching:
    """Fine-tune towards predicted retrained outputs (DMM; OM with the oracle predictor).

    Attributes:
        predictor: predicts the retrained model's outputs on training points; its ``output``
            (``"logits"`` or ``"margin"``) is what is matched.
        loop: optimiser, epochs, batch size and schedule (default: Adam, lr 1e-3, 5 epochs,
            exponential decay 0.95 per epoch, batch 64 — the paper's recipe with a learning rate
            for small models).
        forget_copies: forget examples per epoch, about (:math:`F` is repeated to approach it).
        retain_multiple: retain points sampled, as a multiple of the forget copies (at most
            :math:`|R|`).
        matching: ``"fine_tune"`` (the default) or ``"exact"``: write the predictor's layer
            edit into the model instead (predictors with ``layer_edit`` only; a mask must leave
            that layer free).
    """

    predictor: OutputPredictor
    loop: LoopConfig = field(default_factory=_default_loop)
    forget_copies: int = 400
    retain_multiple: float = 3.0
    matching: Matching = "fine_tune"
    requires_forget_set: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_positive_int("forget_copies", self.forget_copies)
        # NaN and inf failed in int()
        check_non_negative_finite("retain_multiple", self.retain_multiple)
        if self.matching not in MATCHING:
            raise ValueError(f"matching must be one of {MATCHING}, got {self.matching!r}")
        if self.matching == "exact" and not hasattr(self.predictor, "layer_edit"):
            raise ValueError(
                f"matching='exact' needs a predictor whose predictions are a layer edit (the "
                f"head predictors); {type(self.predictor).__name__} has no layer_edit"
            )

    def unlearn(
        self, model: nn.Module, split: ForgetSplit, *, seed: int, mask: Mask | None = None
    ) -> nn.Module:
        self.predictor.check(model, split)
        if self.matching == "exact":
            return apply_layer_edit(model, self.predictor.layer_edit(model, split), mask)
        chosen = matching_set(split, self.forget_copies, self.retain_multiple, seed)
        examples = _examples_at(split, chosen.positions)
        targets = self.predictor.targets(model, examples, chosen.positions, split, seed=seed)
        _check_target_shape(targets, model, examples, self.predictor.output)
        rows = torch.repeat_interleave(
            torch.arange(len(chosen.positions)), torch.as_tensor(chosen.repeats)
        ).to(examples.inputs.device)
        repeated = Examples(examples.inputs[rows], rows)
        loss = _matching_loss(targets.detach(), examples.targets, self.predictor.output)
        phase = Phase("match", {"match": repeated}, loss)
        return unlearning_loop(model, [phase], self.loop, mask=mask, seed=seed)
