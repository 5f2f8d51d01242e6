r"""The one unlearning loop: optimiser, epochs, batches, schedule and hard masks.

Methods describe *what* to minimise as a list of :class:`Phase` objects; the loop decides *how*.
Each epoch runs every phase once, in order. A phase draws minibatches from named data sources
(e.g. ``"forget"`` and ``"retain"``): the *lead* source is shuffled and split into batches, which
sets the phase's number of steps; every other source contributes a batch of the same size per step,
drawn from its own reshuffled stream. For each step the loop minimises the phase's loss

.. math:: \theta \leftarrow \mathrm{opt}\big(\theta, \nabla_\theta L(\theta; B)\big),
   \qquad \theta_j \text{ unchanged wherever } M_j = \text{False},

with :math:`M` the mask (see :mod:`unlearn.masks`).

Training modes and buffers: the epochs run with **every** submodule in training mode
(``model.train()``), including one its owner had put in eval mode, e.g. a BatchNorm layer meant to
keep its statistics, or a dropout meant to be off. Such a BatchNorm layer then normalises with batch
statistics and updates its running statistics (``running_mean``, ``running_var``,
``num_batches_tracked``) on every forward pass of the forget and retain batches, whether or not a
mask freezes its weight and bias: a mask constrains parameters only. Afterwards every submodule
gets back the mode it had on entry, but the statistics keep what the epochs made of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from tda.arguments import check_positive_int
from tda.data.examples import Examples
from tda.device import seeded_rng
from tda.grads import modes_restored
from tda.training import OptimizerFactory, SchedulerFactory
from unlearn.masks import Mask, fully_frozen, pin, restore_frozen, zero_frozen_gradients


@dataclass(frozen=True)
class LoopConfig:
    """How the loop optimises.

    Attributes:
        epochs: passes of every phase.
        batch_size: examples per source per step; a pass's last batch holds the remainder
            (a BatchNorm model in training mode needs it to be at least 2 examples).
        optimizer: builds the optimiser from the trainable parameters (default SGD, lr 0.01,
            momentum 0.9).
        scheduler: optional learning-rate schedule, stepped once per epoch.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: OptimizerFactory = field(default=partial(torch.optim.SGD, lr=0.01, momentum=0.9))
    scheduler: SchedulerFactory | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            check_positive_int(name, getattr(self, name))


@dataclass(frozen=True)
class Progress:
    """Where the loop is when it asks for a loss (for losses with schedules, e.g. decaying ℓ1)."""

    epoch: int
    epochs: int
    step: int

    @property
    def fraction(self) -> float:
        """Fraction of epochs completed before this one, in ``[0, 1)``."""
        return self.epoch / self.epochs


PhaseLoss = Callable[[nn.Module, Mapping[str, Examples], Progress], Tensor]


@dataclass(frozen=True)
class Phase:
    """One pass per epoch over batches drawn from named data sources.

    Attributes:
        name: label used in error messages (e.g. ``"forget"``).
        sources: the data, by name; every source must be non-empty.
        loss: ``loss(model, batches, progress) -> scalar`` where ``batches`` maps each source
            name to this step's minibatch.
        lead: the source whose shuffled pass defines the steps (default: the first source).
    """

    name: str
    sources: Mapping[str, Examples]
    loss: PhaseLoss
    lead: str = ""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError(f"phase {self.name!r} has no data sources")
        if not self.lead:
            object.__setattr__(self, "lead", next(iter(self.sources)))
        if self.lead not in self.sources:
            raise ValueError(f"phase {self.name!r}: lead {self.lead!r} is not one of its sources")
        for source, data in self.sources.items():
            if len(data) == 0:
                raise ValueError(f"phase {self.name!r}: source {source!r} has no examples")


def _phase_batches(phase: Phase, batch_size: int, generator: torch.Generator):
    """Index batches ``[{source: LongTensor[b]}]`` for one pass of ``phase``."""
    lead_size = len(phase.sources[phase.lead])
    plan = [
        {phase.lead: b} for b in torch.randperm(lead_size, generator=generator).split(batch_size)
    ]
    for name, data in phase.sources.items():
        if name == phase.lead:
            continue
        laps = math.ceil(lead_size / len(data))
        stream = torch.cat([torch.randperm(len(data), generator=generator) for _ in range(laps)])
        for batch, indices in zip(plan, stream[:lead_size].split(batch_size), strict=True):
            batch[name] = indices
    return plan


def _select(data: Examples, indices: Tensor) -> Examples:
    indices = indices.to(data.inputs.device)
    return Examples(data.inputs[indices], data.targets[indices])


# torch's error when a layer normalising by batch statistics (BatchNorm in training mode) is given
# one value per channel, e.g. a batch of one example
ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"


def _batch_of_one_message(phase: Phase, batch_size: int, error: ValueError) -> str:
    """What to do when a batch of one example reached a BatchNorm layer in training mode."""
    size = len(phase.sources[phase.lead])
    cause = (
        f"phase {phase.name!r} drew a batch of one example from source {phase.lead!r} ({size} "
        f"examples, batch_size {batch_size}), and a layer normalising by batch statistics "
        f"(BatchNorm in training mode) needs at least 2 ({error})"
    )
    if size == 1:
        return f"{cause}; give the source at least 2 examples"
    other = next(c for c in range(max(batch_size + 1, 2), size + 1) if size % c != 1)
    return f"{cause}; choose a batch_size that leaves no batch of one example, e.g. {other}"


def _step_loss(model, phase: Phase, indices, progress: Progress, batch_size: int) -> Tensor:
    batches = {name: _select(phase.sources[name], idx) for name, idx in indices.items()}
    try:
        loss = phase.loss(model, batches, progress)
    except ValueError as error:
        if len(indices[phase.lead]) == 1 and ONE_VALUE_PER_CHANNEL in str(error):
            raise ValueError(_batch_of_one_message(phase, batch_size, error)) from error
        raise
    if loss.dim() != 0:
        raise ValueError(f"phase {phase.name!r} returned a loss of shape {tuple(loss.shape)}")
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"unlearning loss became {float(loss.detach())} in phase {phase.name!r} at epoch "
            f"{progress.epoch + 1}, step {progress.step}; lower the learning rate or the epochs"
        )
    return loss


def _build_optimizer(model: nn.Module, config: LoopConfig, mask: Mask | None):
    frozen = fully_frozen(mask) if mask is not None else set()
    trainable = [
        p for name, p in model.named_parameters() if p.requires_grad and name not in frozen
    ]
    if not trainable:
        cause = (
            "every parameter of the model has requires_grad=False (requires_grad_(True) "
            "unfreezes them)"
            if not any(p.requires_grad for p in model.parameters())
            else "the mask freezes every weight the model lets change"
        )
        raise ValueError(f"{cause}; nothing can be unlearned")
    return config.optimizer(trainable)


FINITE_CHECK_ROWS = 4096  # examples per forward pass of the final finite-output check


def _check_finite_weights(model: nn.Module) -> None:
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            raise FloatingPointError(f"parameter {name!r} became non-finite during unlearning")


@torch.no_grad()
def _check_finite_outputs(model: nn.Module, phases: Sequence[Phase], batch_size: int) -> None:
    """Finite weights can still give infinite outputs (e.g. after gradient ascent): refuse them.
    Checked ``max(batch_size, FINITE_CHECK_ROWS)`` examples at a time: memory stays bounded
    however large the data, and small data takes one forward pass."""
    rows = max(batch_size, FINITE_CHECK_ROWS)
    for phase in phases:
        for source, data in phase.sources.items():
            if not all(
                bool(torch.isfinite(model(chunk)).all()) for chunk in data.inputs.split(rows)
            ):
                raise FloatingPointError(
                    f"the unlearned model's outputs on phase {phase.name!r}, source {source!r} "
                    "are not finite; lower the learning rate or the epochs"
                )


def _run_epochs(model, phases, config, optimizer, pinned, generator) -> None:
    scheduler = config.scheduler(optimizer) if config.scheduler else None
    step = 0
    for epoch in range(config.epochs):
        for phase in phases:
            for indices in _phase_batches(phase, config.batch_size, generator):
                progress = Progress(epoch, config.epochs, step)
                loss = _step_loss(model, phase, indices, progress, config.batch_size)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                zero_frozen_gradients(pinned)
                optimizer.step()
                restore_frozen(pinned)
                step += 1
        if scheduler is not None:
            scheduler.step()


def unlearning_loop(
    model: nn.Module,
    phases: Sequence[Phase],
    config: LoopConfig | None = None,
    *,
    mask: Mask | None = None,
    seed: int = 0,
) -> nn.Module:
    """Minimise the phases' losses on ``model`` **in place**, keeping masked-out weights fixed.

    The :class:`~unlearn.Unlearner` passes a copy, so the caller's model is never touched.
    Shuffling uses a generator seeded by ``seed`` and any other randomness (dropout) runs under a
    forked, seeded global RNG: the same inputs and seed give bitwise the same weights on CPU.

    Every submodule runs in training mode during the epochs, whatever mode it had on entry, so
    BatchNorm running statistics are updated even in layers the owner had put in eval mode or the
    mask freezes entirely.

    Args:
        model: the model to update.
        phases: what to minimise, run in order every epoch.
        config: optimiser, epochs, batch size and schedule (default :class:`LoopConfig`).
        mask: ``{name: bool tensor}``, ``True`` = trainable; unnamed parameters are trainable.
            Masked-out weights stay bitwise unchanged under any optimiser, weight decay included;
            buffers (BatchNorm's running statistics) are not covered and follow the training
            mode (see the module docstring).
        seed: seed for shuffling and dropout.

    Returns:
        ``model`` (updated, every submodule back in the training mode it had on entry; buffers
        such as BatchNorm running statistics as the epochs left them).

    Raises:
        ValueError: no phases, a bad mask, a mask that freezes everything, a non-scalar loss, a
            batch of one example reaching a BatchNorm layer in training mode (the last batch of a
            lead source of ``n`` examples when ``n % batch_size == 1``; every batch when
            ``batch_size`` is 1 or the source has one example), naming the phase, the sizes and
            a batch size that avoids it.
        FloatingPointError: a loss, a weight or an output on the phases' data became NaN or
            infinite.
    """
    if not phases:
        raise ValueError("the unlearning loop needs at least one phase")
    config = config if config is not None else LoopConfig()
    pinned = pin(model, mask) if mask is not None else []
    optimizer = _build_optimizer(model, config, mask)
    generator = torch.Generator().manual_seed(seed)
    with modes_restored(model):
        model.train()
        with seeded_rng(seed):
            _run_epochs(model, phases, config, optimizer, pinned, generator)
        _check_finite_weights(model)
        model.eval()
        _check_finite_outputs(model, phases, config.batch_size)
    return model
