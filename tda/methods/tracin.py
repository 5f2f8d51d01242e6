r"""TracIn-CP (Pruthi et al. 2020, "Estimating Training Data Influence by Tracing Gradient
Descent").

Over saved checkpoints :math:`\theta_c`,

.. math:: \tau(x)_i = \sum_c \eta_c\, \nabla_\theta f(x;\theta_c) \cdot
          \big(-\nabla_\theta \ell(z_i;\theta_c)\big),

the first-order change of the query output :math:`f(x)` caused by gradient steps on :math:`z_i`
(a step :math:`\theta \leftarrow \theta - \eta\nabla\ell(z_i)` changes :math:`f(x)` by
:math:`-\eta\nabla f(x)\cdot\nabla\ell(z_i)`), so ``scores[q, i] > 0`` means :math:`z_i` pushes
:math:`f(x_q)` up, the library's sign convention. The paper writes the query's loss gradient;
for the margin :math:`\nabla\ell(x) = -(1-p_x)\nabla f(x)`, so the two differ by a positive factor
per query and rank training examples identically.

:math:`\eta_c` is the checkpoint's ``segment_learning_rate``: the mean learning rate over the
steps the checkpoint closes, i.e. the step size actually used between the previous checkpoint and
this one (the paper's choice). ``learning_rate`` is not used: the trainer records it after the
scheduler has stepped, so it is the rate of the *next* segment. The first-order reading assumes
(stochastic) gradient descent; with Adam it is the usual heuristic, not a step's effect.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from tda.checkpoints import Checkpoint
from tda.data.examples import Examples, as_examples, check_finite_inputs
from tda.grads import ParameterNames, per_sample_gradients
from tda.methods.runs import TrainingRun
from tda.methods.stages import TrainingStage, scatter_columns, stage_indices, stage_subset
from tda.methods.trajectory import (
    ModelFactory,
    check_listed_once,
    load_model,
    on_model_device,
    streamed_products,
)
from tda.task import ClassificationTask, Task


def warn_if_single_checkpoint(checkpoints: Sequence[Checkpoint]) -> None:
    r"""Warn (``UserWarning``) when at most one of ``checkpoints`` has a nonzero
    ``segment_learning_rate`` (the step-0 start has none, so its term is 0): TracIn is then
    :math:`\eta\,\nabla f(x)\cdot(-\nabla\ell(z))` at one point, a learning-rate-scaled
    gradient dot product (grad-dot) rather than a sum over the training trajectory."""
    weighted = sum(checkpoint.segment_learning_rate != 0 for checkpoint in checkpoints)
    if weighted > 1:
        return
    count = f"{len(checkpoints)} checkpoint{'s' if len(checkpoints) != 1 else ''}"
    if weighted < len(checkpoints):
        count += f", {weighted} with a nonzero segment learning rate (the step-0 start adds 0)"
    warnings.warn(
        f"TracIn got {count}: TracIn over one checkpoint is a learning-rate-scaled gradient dot "
        "product (grad-dot), not a sum over the training trajectory; save more checkpoints while "
        "training (TrainConfig(checkpoints=N); with the Hydra configs, ++train.checkpoints=N)",
        UserWarning,
        stacklevel=3,
    )


@dataclass
class TracIn:
    """TracIn-CP over checkpoints written by :func:`tda.training.train` (or any trainer).

    Args:
        task: the attributed output ``f`` and the training loss ``ℓ``.
        parameters: names of the parameters to differentiate (default: all trainable ones), or
            a rule of the model giving them (:data:`tda.grads.ParameterNames`).
        chunk_size: training examples per per-sample-gradient call; memory is
            ``chunk_size * p`` floats.
    """

    task: Task = field(default_factory=ClassificationTask)
    parameters: ParameterNames = None
    chunk_size: int = 256
    checkpoints: list[Checkpoint] = field(default_factory=list, init=False)
    _examples: list[Tensor | None] = field(default_factory=list, init=False, repr=False)
    _model_factory: ModelFactory | None = field(default=None, init=False, repr=False)
    _train: Examples | None = field(default=None, init=False, repr=False)

    def fit(
        self, model_factory: ModelFactory, checkpoints: Sequence[Checkpoint], train: Any
    ) -> TracIn:
        """Record the checkpoints and the training set (gradients are streamed in ``score``).

        ``train`` is ``Examples`` or anything :func:`tda.as_examples` reads (e.g. ``(X, y)``
        arrays).

        Warns:
            UserWarning: at most one checkpoint has a nonzero ``segment_learning_rate`` (one
                checkpoint, or one and the step-0 start): TracIn is then grad-dot scaled by the
                learning rate, not a trajectory (see :func:`warn_if_single_checkpoint`).

        Raises:
            ValueError: no checkpoints, a checkpoint listed twice, an empty training set,
                inputs holding NaN or infinity (the first example named), or a non-positive
                chunk size.
        """
        return self.fit_stages(model_factory, [TrainingStage(checkpoints)], train)

    def fit_stages(
        self, model_factory: ModelFactory, stages: Sequence[TrainingStage], train: Any
    ) -> TracIn:
        """``fit`` for training in stages, each on its own examples: a checkpoint's term covers
        only the examples its stage trained on (the others took no step there), so an example's
        score sums over the stages that saw it (0 where none did).

        Warns:
            UserWarning: as ``fit``, counting the checkpoints of every stage.

        Raises:
            ValueError: as ``fit``; bad stage examples (see :func:`stage_indices`); a checkpoint
                listed twice (its term would be counted twice).
        """
        if not any(stage.checkpoints for stage in stages):
            raise ValueError("TracIn needs at least one checkpoint; got none")
        check_listed_once([c for stage in stages for c in stage.checkpoints])
        train = as_examples(train)
        if len(train) == 0:
            raise ValueError("cannot attribute to an empty training set")
        check_finite_inputs(train.inputs)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")
        examples = [stage_indices(stage.examples, len(train)) for stage in stages]
        warn_if_single_checkpoint([c for stage in stages for c in stage.checkpoints])
        self._model_factory, self._train = model_factory, train
        self.checkpoints = [c for stage in stages for c in stage.checkpoints]
        pairs = zip(stages, examples, strict=True)
        self._examples = [indices for stage, indices in pairs for _ in stage.checkpoints]
        return self

    def fit_run(self, run: TrainingRun) -> TracIn:
        """``fit`` on the run's model factory, checkpoints and training set."""
        return self.fit(run.model_factory, run.checkpoints, run.train)

    def score(self, queries: Any) -> Tensor:
        """TracIn-CP scores ``[n_query, n_train]`` in the dtype of the model's gradients.

        ``queries`` is ``Examples`` or anything :func:`tda.as_examples` reads.
        """
        if self._model_factory is None:
            raise RuntimeError("call fit(model_factory, checkpoints, train) before score()")
        queries = as_examples(queries)
        total, dtype = None, None
        for checkpoint, indices in zip(self.checkpoints, self._examples, strict=True):
            model = load_model(self._model_factory, checkpoint)
            local = on_model_device(model, queries)
            query_gradients = per_sample_gradients(
                model, self.task, local.inputs, local.targets, parameters=self.parameters
            )
            dtype = query_gradients.dtype
            # η_c ∇f(x)·(−∇ℓ(z)): the output change from a step of size η_c on z
            left = -checkpoint.segment_learning_rate * query_gradients.double()
            scores = streamed_products(
                model,
                self.task,
                left,
                stage_subset(self._train, indices),
                parameters=self.parameters,
                chunk_size=self.chunk_size,
            )
            total = scatter_columns(total, scores, indices, len(self._train))
        return total.to(dtype)
