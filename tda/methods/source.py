r"""Source (Bae et al. 2024, "Training Data Attribution via Approximate Unrolled Differentiation").

The checkpoints are split into :math:`L` contiguous segments. Segment :math:`l` has :math:`K_l`
steps (the sum of its checkpoints' ``segment_steps``), learning rate :math:`\eta_l` (their
step-weighted mean ``segment_learning_rate``), curvature :math:`H_l` (of the mean training loss at
the segment's *last* checkpoint, damped: :math:`H_l + \lambda I`; one curvature fit per segment) and
mean gradient :math:`\bar g_l(z)` (the step-weighted mean of :math:`\nabla\ell(z;\theta_c)` over the
segment's checkpoints, each checkpoint standing for the steps it closes; ``gradients="start"``
takes each at the checkpoint before instead, where those steps begin). Holding :math:`H_l` and
:math:`\bar g_l` constant, up-weighting :math:`z` by :math:`\epsilon` in the mean loss changes one
step's parameter perturbation :math:`d` by
:math:`d \leftarrow (I - \eta H)d - \frac{\eta}{n}\bar g`, so a segment maps
:math:`d \leftarrow P_l d - \frac1n r_l(z)` with

.. math:: P_l = e^{-\eta_l K_l H_l}, \qquad r_l(z) = (I - P_l) H_l^{-1} \bar g_l(z),

(``discrete=True`` uses the exact gradient-descent propagator :math:`P_l = (I - \eta_l H_l)^{K_l}`
instead of the paper's exponential). Removing :math:`z` (:math:`\epsilon = -1`) therefore moves the
final parameters by :math:`\Delta\theta(z) = \frac1n\sum_l P_L \cdots P_{l+1} r_l(z)`.

**Sign.** Removing :math:`z` changes :math:`f(x)` by
:math:`\nabla f(x;\theta_T)^\top\Delta\theta(z)`; the library's convention wants :math:`\tau > 0`
when removal lowers :math:`f`, so :math:`\tau(x)_z = -\nabla f(x;\theta_T)^\top \Delta\theta(z)
= \partial f(x;\theta_T)/\partial\epsilon_z`, the derivative of the query output with respect to
the example's weight in the loss.

All matrices are symmetric, so the scores are computed transposed: the query gradient is pushed
backwards through the segments, :math:`u_L = \nabla f(x)`, :math:`w_l = \phi_l(H_l) u_l`,
:math:`u_{l-1} = P_l u_l`, and :math:`\tau(x)_z = -\frac1n\sum_l w_l^\top \bar g_l(z)` (``q``
eigen-transforms per segment, then streamed dot products with training gradients). In an eigenbasis
of :math:`H_l` the functions act on the eigenvalues :math:`h`: :math:`\phi(h) = (1 - e^{-\eta K
h})/h` (or :math:`(1 - (1-\eta h)^K)/h`), which tends to :math:`\eta K` as :math:`h \to 0` and is
evaluated without cancellation, so no damping is needed for positive semi-definite curvature. With
one segment and :math:`\eta K h \gg 1` it is :math:`1/h`: the influence function.

**Stages.** Training in stages on different data (pre-training on :math:`D_1`, then fine-tuning on
:math:`D_2`, ...) is what Source's segments are for (``fit_stages``): each stage :math:`s` is split
into its own segments, whose curvature is that of the mean loss over :math:`D_s` and whose
gradient terms carry :math:`\frac{1}{|D_s|}` for :math:`z \in D_s` and nothing otherwise. An
example's score sums over the stages that trained on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from tda.checkpoints import Checkpoint
from tda.curvature.base import Curvature, check_curvature, check_damping
from tda.curvature.explicit import explicit_curvature
from tda.curvature.kronecker import (
    KroneckerEigenbasis,
    apply_in_eigenbasis,
    fit_kronecker_eigenbases,
)
from tda.data.examples import Examples, as_examples, check_finite_inputs
from tda.grads import ParameterNames, per_sample_gradients
from tda.methods.runs import TrainingRun
from tda.methods.stages import TrainingStage, scatter_columns, stage_indices, stage_subset
from tda.methods.trajectory import ModelFactory, load_model, on_model_device, streamed_products
from tda.task import ClassificationTask, Task

SpectralFunction = Callable[[Tensor], Tensor]


class Eigenbasis(Protocol):
    r"""A symmetric curvature :math:`C = V \operatorname{diag}(h) V^\top` (dense, or per layer)."""

    def apply(self, function: SpectralFunction, vectors: Tensor) -> Tensor:
        r"""``[q, p] -> [q, p]`` (float64): :math:`V \operatorname{diag}(F(h)) V^\top v` per row."""
        ...


class EigenbasisProvider(Protocol):
    """Decomposes the curvature of the mean training loss at a model's parameters."""

    def decompose(
        self, model: nn.Module, task: Task, train: Examples, *, parameters: ParameterNames
    ) -> Eigenbasis: ...


@dataclass(frozen=True)
class DenseEigenbasis:
    """Eigenvalues ``[p]`` and orthonormal eigenvectors (columns of ``[p, p]``), float64."""

    eigenvalues: Tensor
    eigenvectors: Tensor

    def apply(self, function: SpectralFunction, vectors: Tensor) -> Tensor:
        coordinates = vectors.to(self.eigenvectors) @ self.eigenvectors
        return (coordinates * function(self.eigenvalues)) @ self.eigenvectors.T


@dataclass(frozen=True)
class ExplicitEigenbasis:
    """Materialise the ``[p, p]`` Hessian or Gauss-Newton matrix and ``eigh`` it (small ``p``)."""

    curvature: Curvature = "gauss_newton"
    chunk_size: int = 256
    max_parameters: int = 10_000

    def __post_init__(self) -> None:
        check_curvature(self.curvature)

    def decompose(self, model, task, train, *, parameters=None) -> DenseEigenbasis:
        matrix = explicit_curvature(
            model, task, train, curvature=self.curvature, parameters=parameters,
            chunk_size=self.chunk_size, max_parameters=self.max_parameters,
        )  # fmt: skip
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix.double())
        return DenseEigenbasis(eigenvalues, eigenvectors)


@dataclass(frozen=True, eq=False)
class KroneckerEigenbases:
    """Per-layer Kronecker eigenbases (:mod:`tda.curvature.kronecker`; Linear and convolution)."""

    layers: tuple[KroneckerEigenbasis, ...]

    def apply(self, function: SpectralFunction, vectors: Tensor) -> Tensor:
        return apply_in_eigenbasis(self.layers, vectors.double(), function)


@dataclass(frozen=True)
class EKFACEigenbasis:
    """EK-FAC (``corrected=True``, the paper's choice) or K-FAC eigenbases of the Fisher, per
    Linear or convolution layer; arguments as in
    :func:`tda.curvature.kronecker.fit_kronecker_eigenbases`.
    """

    corrected: bool = True
    sampled_labels: bool = True
    seed: int = 0
    chunk_size: int = 256

    def decompose(self, model, task, train, *, parameters=None) -> KroneckerEigenbases:
        layers = fit_kronecker_eigenbases(
            model, task, train, parameters=parameters, corrected=self.corrected,
            sampled_labels=self.sampled_labels, seed=self.seed, chunk_size=self.chunk_size,
        )  # fmt: skip
        return KroneckerEigenbases(layers)


def _relative_gain(exponent: Tensor, scaled: Tensor) -> Tensor:
    """``-expm1(exponent) / scaled`` with the limit 1 where ``scaled`` is 0."""
    zero = scaled == 0
    ratio = -torch.expm1(exponent) / torch.where(zero, torch.ones_like(scaled), scaled)
    return torch.where(zero, torch.ones_like(ratio), ratio)


def unrolled_gain(eigenvalues: Tensor, rate: float, steps: int, discrete: bool) -> Tensor:
    r""":math:`\phi(h) = (1 - e^{-\eta K h})/h` or :math:`(1 - (1 - \eta h)^K)/h`; :math:`\eta K`
    at :math:`h = 0`. Computed as :math:`\eta K` times a ratio that never cancels."""
    scaled = rate * eigenvalues  # ηh
    if not discrete:
        return rate * steps * _relative_gain(-steps * scaled, steps * scaled)
    small = scaled.abs() < 0.5  # log1p route near 0; the direct power has no cancellation beyond
    safe = torch.where(small, scaled, torch.zeros_like(scaled))
    near = _relative_gain(steps * torch.log1p(-safe), steps * safe)
    far = (1 - (1 - scaled) ** steps) / (steps * torch.where(small, 1.0, scaled))
    return rate * steps * torch.where(small, near, far)


def unrolled_decay(eigenvalues: Tensor, rate: float, steps: int, discrete: bool) -> Tensor:
    r"""The segment propagator's eigenvalues :math:`e^{-\eta K h}` or :math:`(1 - \eta h)^K`."""
    if discrete:
        return (1 - rate * eigenvalues) ** steps
    return torch.exp(-rate * steps * eigenvalues)


@dataclass(frozen=True)
class Segment:
    r"""Contiguous checkpoints, their total steps :math:`K_l` and mean learning rate
    :math:`\eta_l`; ``previous`` is the checkpoint just before them (``None`` for the first
    segment of a run saved without its starting parameters)."""

    checkpoints: tuple[Checkpoint, ...]
    steps: int
    learning_rate: float
    previous: Checkpoint | None = None

    def intervals(self) -> list[tuple[Checkpoint | None, Checkpoint]]:
        """``(start, end)`` checkpoints of the steps each of the segment's checkpoints closes."""
        starts = (self.previous, *self.checkpoints[:-1])
        return list(zip(starts, self.checkpoints, strict=True))


def plan_segments(checkpoints: Sequence[Checkpoint], segments: int) -> list[Segment]:
    """Split checkpoints (training order) into ``segments`` contiguous groups of near-equal size.

    A first checkpoint that closes no steps (the starting parameters, saved by
    ``TrainConfig(save_initial=True)``) belongs to no segment: it is the first one's ``previous``.

    Raises:
        ValueError: more segments than checkpoints closing steps, checkpoints out of order, or a
            checkpoint after the first closing no steps.
    """
    if segments < 1:
        raise ValueError(f"segments must be at least 1, got {segments}")
    steps = [c.step for c in checkpoints]
    if any(later <= earlier for earlier, later in zip(steps[:-1], steps[1:], strict=True)):
        raise ValueError(f"checkpoints must be in training order (increasing steps), got {steps}")
    start = checkpoints[0] if checkpoints and checkpoints[0].segment_steps == 0 else None
    closing = list(checkpoints[1:] if start is not None else checkpoints)
    if segments > len(closing):
        raise ValueError(
            f"asked for {segments} segments but only {len(closing)} checkpoints were saved"
            f"{' after the start' if start is not None else ''}; save more checkpoints "
            "(TrainConfig(checkpoints=...)) or use fewer segments"
        )
    empty = [c.checkpoint_id for c in closing if c.segment_steps < 1]
    if empty:
        raise ValueError(f"checkpoints {empty} close no optimiser steps (segment_steps < 1)")
    bounds = [index * len(closing) // segments for index in range(segments + 1)]
    plan, previous = [], start
    for first, stop in zip(bounds[:-1], bounds[1:], strict=True):
        group = tuple(closing[first:stop])
        total = sum(c.segment_steps for c in group)
        rate = sum(c.segment_steps * c.segment_learning_rate for c in group) / total
        plan.append(Segment(group, total, rate, previous))
        previous = group[-1]
    return plan


def plan_stages(stages: Sequence[TrainingStage], segments: int) -> list[Segment]:
    """``segments`` contiguous segments per stage; a stage saved without its starting parameters
    starts where the previous stage ended (its first segment's ``previous``).

    Raises:
        ValueError: no stages, or see :func:`plan_segments` for each stage.
    """
    if not stages:
        raise ValueError("Source needs at least one training stage")
    plan: list[Segment] = []
    for stage in stages:
        planned = plan_segments(stage.checkpoints, segments)
        if plan and planned[0].previous is None:
            planned[0] = replace(planned[0], previous=plan[-1].checkpoints[-1])
        plan += planned
    return plan


@dataclass
class Source:
    r"""Source attributor over a trainer's checkpoints (the last one is the trained model).

    The unrolling assumes (stochastic) gradient descent: with Adam, the recorded learning rate is
    not the effective step size and :math:`\eta K H` is mis-scaled.

    Args:
        segments: number :math:`L` of contiguous segments the checkpoints are split into.
        damping: :math:`\lambda` added to every curvature eigenvalue. 0 is safe for positive
            semi-definite curvature (the gain is bounded by :math:`\eta K`); use more for an
            indefinite Hessian, whose negative eigenvalues make :math:`e^{-\eta K h}` grow.
        task: the attributed output ``f`` and the training loss ``ℓ``.
        parameters: names of the parameters to attribute through (default: all trainable ones),
            or a rule of the model giving them (:data:`tda.grads.ParameterNames`).
        eigenbasis: decomposes each segment's curvature: :class:`ExplicitEigenbasis` (default:
            the exact Gauss-Newton matrix, small models) or :class:`EKFACEigenbasis`.
        discrete: use :math:`(I - \eta H)^K` (exact for gradient descent with constant curvature;
            needs :math:`\eta h \le 2`) instead of the paper's :math:`e^{-\eta K H}`.
        chunk_size: training examples per per-sample-gradient call.
        gradients: where the gradients standing for a checkpoint's steps are taken: ``"end"``
            (default) at that checkpoint, ``"start"`` at the checkpoint before it, where those
            steps begin. ``"start"`` needs the starting parameters as the first checkpoint
            (``TrainConfig(save_initial=True)``); with a checkpoint per full-batch gradient step
            and constant curvature it is exact from any start, while ``"end"`` lags one step.
    """

    segments: int = 1
    damping: float = 0.0
    task: Task = field(default_factory=ClassificationTask)
    parameters: ParameterNames = None
    eigenbasis: EigenbasisProvider = field(default_factory=ExplicitEigenbasis)
    discrete: bool = False
    chunk_size: int = 256
    gradients: Literal["end", "start"] = "end"
    plan: list[Segment] = field(default_factory=list, init=False)
    _examples: list[Tensor | None] = field(default_factory=list, init=False, repr=False)
    _bases: list[Eigenbasis] = field(default_factory=list, init=False, repr=False)
    _model_factory: ModelFactory | None = field(default=None, init=False, repr=False)
    _train: Examples | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_damping(self.damping)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.gradients not in ("end", "start"):
            raise ValueError(f"gradients must be 'end' or 'start', got {self.gradients!r}")

    def fit(
        self, model_factory: ModelFactory, checkpoints: Sequence[Checkpoint], train: Any
    ) -> Source:
        """Plan the segments and decompose each segment's curvature at its last checkpoint.

        ``train`` is ``Examples`` or anything :func:`tda.as_examples` reads (e.g. ``(X, y)``
        arrays).

        Raises:
            ValueError: see :func:`plan_segments`; an empty training set; inputs holding NaN or
                infinity (the first example named); ``gradients="start"`` without a first
                checkpoint of the starting parameters.
        """
        return self.fit_stages(model_factory, [TrainingStage(checkpoints)], train)

    def fit_stages(
        self, model_factory: ModelFactory, stages: Sequence[TrainingStage], train: Any
    ) -> Source:
        """``fit`` for training in stages, each on its own examples: ``segments`` segments per
        stage, each segment's curvature and gradients over its stage's examples only, and an
        example's score the sum over the stages that trained on it (0 where none did).

        Raises:
            ValueError: as ``fit``; bad stage examples (see :func:`stage_indices`). A fit that
                raises leaves the attributor as it was.
            NonFiniteGradientError: a segment's curvature holds NaN or infinity (e.g. a target
                outside the model's classes).
        """
        train = as_examples(train)
        if len(train) == 0:
            raise ValueError("cannot attribute to an empty training set")
        check_finite_inputs(train.inputs)
        examples = [stage_indices(stage.examples, len(train)) for stage in stages]
        plan = plan_stages(stages, self.segments)
        if self.gradients == "start" and plan[0].previous is None:
            raise ValueError(
                "gradients='start' needs the starting parameters as the first checkpoint (one "
                "closing no steps): train with TrainConfig(save_initial=True) (Hydra: "
                "++train.save_initial=true)"
            )
        segment_examples = [indices for indices in examples for _ in range(self.segments)]
        bases = []
        for segment, indices in zip(plan, segment_examples, strict=True):
            model = load_model(model_factory, segment.checkpoints[-1])
            local = on_model_device(model, stage_subset(train, indices))
            basis = self.eigenbasis.decompose(model, self.task, local, parameters=self.parameters)
            bases.append(basis)
        self.plan, self._examples, self._bases = plan, segment_examples, bases
        self._model_factory, self._train = model_factory, train
        return self

    def fit_run(self, run: TrainingRun) -> Source:
        """``fit`` on the run's model factory, checkpoints and training set."""
        return self.fit(run.model_factory, run.checkpoints, run.train)

    def score(self, queries: Any) -> Tensor:
        """Source scores ``[n_query, n_train]`` in the dtype of the model's gradients.

        ``queries`` is ``Examples`` or anything :func:`tda.as_examples` reads.
        """
        if self._model_factory is None:
            raise RuntimeError("call fit(model_factory, checkpoints, train) before score()")
        queries = as_examples(queries)
        final = load_model(self._model_factory, self.plan[-1].checkpoints[-1])
        local = on_model_device(final, queries)
        query_gradients = per_sample_gradients(
            final, self.task, local.inputs, local.targets, parameters=self.parameters
        )
        total = None
        directions = self._directions(query_gradients)
        for segment, indices, direction in zip(self.plan, self._examples, directions, strict=True):
            data = stage_subset(self._train, indices)
            for start, checkpoint in segment.intervals():
                at = start if self.gradients == "start" else checkpoint
                model = load_model(self._model_factory, at)
                weight = -checkpoint.segment_steps / (segment.steps * len(data))
                scores = streamed_products(
                    model, self.task, weight * direction, data,
                    parameters=self.parameters, chunk_size=self.chunk_size,
                )  # fmt: skip
                total = scatter_columns(total, scores, indices, len(self._train))
        return total.to(query_gradients.dtype)

    def _directions(self, query_gradients: Tensor) -> list[Tensor]:
        r"""Per segment, :math:`w_l = \phi_l(H_l) P_{l+1} \cdots P_L \nabla f(x)` (``[q, p]``)."""
        directions, carried = [], query_gradients.double()
        for index in reversed(range(len(self.plan))):
            segment, basis = self.plan[index], self._bases[index]
            gain = basis.apply(self._spectral(unrolled_gain, segment), carried)
            carried = basis.apply(self._spectral(unrolled_decay, segment), carried)
            if not (torch.isfinite(gain).all() and torch.isfinite(carried).all()):
                raise FloatingPointError(
                    f"Source's propagator overflowed in segment {index} (learning rate "
                    f"{segment.learning_rate:g}, {segment.steps} steps): the curvature has large "
                    "negative eigenvalues; use a positive semi-definite curvature (gauss_newton) "
                    "or more damping"
                )
            directions.append(gain)
        return directions[::-1]

    def _spectral(self, function, segment: Segment) -> SpectralFunction:
        """``function`` of the damped eigenvalues with the segment's learning rate and steps."""

        def spectral(eigenvalues: Tensor) -> Tensor:
            damped = eigenvalues + self.damping
            if self.discrete and bool((segment.learning_rate * damped > 2).any()):
                raise ValueError(
                    f"gradient descent at learning rate {segment.learning_rate:g} diverges on this "
                    f"curvature (largest eigenvalue {float(damped.max()):.3g} > 2 / rate); the "
                    "discrete propagator needs rate * eigenvalue <= 2: use discrete=False"
                )
            return function(damped, segment.learning_rate, segment.steps, self.discrete)

        return spectral
