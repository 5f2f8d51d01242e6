r"""Influence functions (Koh & Liang 2017, Eq. 2-4) over any curvature solver.

For a model trained to a minimum :math:`\hat\theta` of :math:`L(\theta) = \frac1n\sum_i
\ell(z_i;\theta)`, removing :math:`z_i` moves the parameters by about
:math:`\frac1n (H + \lambda I)^{-1}\nabla\ell(z_i)` and the output :math:`f(x)` of a query by
:math:`\frac1n \nabla f(x)^\top (H + \lambda I)^{-1}\nabla\ell(z_i)`. The score is minus that
change,

.. math:: \tau(x)_i = -\frac1n \nabla_\theta f(x)^\top (H + \lambda I)^{-1} \nabla_\theta \ell(z_i),

so :math:`\tau(x)_i > 0` means :math:`z_i` pushes :math:`f(x)` up (removing it would lower it): the
library's sign convention. :math:`H` and :math:`\lambda` are the solver's curvature and damping;
an L2 penalty :math:`\frac{\lambda}{2}\lVert\theta\rVert^2` in training is matched exactly by
``damping=λ``. Each query is solved once (``q`` solves, not ``n``); the training loss gradients are
then streamed in chunks, so memory is bounded by ``chunk_size * p + q * p``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tda.curvature.base import CurvatureSolver, SolverDivergedError
from tda.data.examples import Examples, as_examples, check_finite_inputs, check_input_dtype
from tda.grads import ParameterNames, iter_per_sample_gradients
from tda.methods.runs import TrainingRun
from tda.task import ClassificationTask, Task


@dataclass
class InfluenceFunction:
    """Influence-function attributor: ``fit(model, train)`` (or ``fit_run(run)``), then
    ``score(queries)``.

    Args:
        solver: applies :math:`(H + \\lambda I)^{-1}` (explicit, CG, LiSSA, K-FAC, diagonal...).
        task: the attributed ``output`` :math:`f` and training ``loss`` :math:`\\ell`.
        parameters: names of the parameters to attribute through (default: all trainable ones),
            or a rule of the model giving them (:data:`tda.grads.ParameterNames`), e.g.
            :func:`tda.curvature.kronecker_parameters` for K-FAC / EK-FAC on a model with other
            layers too (resolved at ``fit``).
        chunk_size: examples per per-sample-gradient call and per solve.
    """

    solver: CurvatureSolver
    task: Task = ClassificationTask()
    parameters: ParameterNames = None
    chunk_size: int = 256
    selected: list[str] | None = field(default=None, init=False, repr=False)
    model: nn.Module | None = field(default=None, init=False, repr=False)
    train: Examples | None = field(default=None, init=False, repr=False)
    fitted_solver: CurvatureSolver | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")

    def fit(self, model: nn.Module, train: Any) -> InfluenceFunction:
        """Fit a copy of the solver to the curvature of the mean training loss; keep the model
        and data. ``solver`` itself is left unfitted, so one solver can serve several attributors.

        ``train`` is ``Examples`` or anything :func:`tda.as_examples` reads (e.g. ``(X, y)``
        arrays). The model must not change afterwards (scores read its parameters).

        Raises:
            ValueError: an empty training set, floating inputs of another dtype than the model
                (:func:`tda.data.examples.check_input_dtype`), or inputs holding NaN or infinity
                (the first example named), refused before any work.
        """
        train = as_examples(train)
        if len(train) == 0:
            raise ValueError("cannot fit influence functions on an empty training set")
        check_input_dtype(model, train.inputs)
        check_finite_inputs(train.inputs)
        chosen = self.parameters(model) if callable(self.parameters) else self.parameters
        selected = None if chosen is None else list(chosen)
        # A copy: most solvers fit in place, and the solver may be shared with other attributors.
        fitted = copy.copy(self.solver).fit(model, self.task, train, parameters=selected)
        self.selected, self.fitted_solver, self.model, self.train = selected, fitted, model, train
        return self

    def fit_run(self, run: TrainingRun) -> InfluenceFunction:
        """``fit`` on the run's trained model (its last checkpoint) and training set."""
        return self.fit(run.final_model(), run.train)

    def score(self, queries: Any) -> Tensor:
        r"""Scores ``[n_query, n_train]``: :math:`\tau(x_q)_i` as defined in the module docstring.

        ``queries`` is ``Examples`` or anything :func:`tda.as_examples` reads.

        Raises:
            RuntimeError: called before ``fit``.
            ValueError: floating query inputs of another dtype than the model.
            SolverDivergedError: the solver returned non-finite vectors.
        """
        queries = as_examples(queries)
        solved = torch.cat(list(self._solved_output_gradients(queries)))  # [q, p]
        scores = torch.empty(len(queries), len(self.train), dtype=solved.dtype)
        for start, block in self._loss_gradients(self.train):
            scores[:, start : start + len(block)] = (solved @ block.T).cpu()
        return scores.mul_(-1.0 / len(self.train))

    def self_influence(self) -> Tensor:
        r"""``[n]``: :math:`\tau(z_i)_i` for each training example (``n`` solves; not cheap).

        For a margin output and cross-entropy loss :math:`\nabla\ell = -(1-p)\nabla f`, so self-
        influence is :math:`\frac{1-p_i}{n}\nabla f^\top(H+\lambda I)^{-1}\nabla f \ge 0`.
        """
        train = self._require_fitted()
        values = []
        solved_chunks = self._solved_output_gradients(train)
        for (_, loss_block), solved in zip(self._loss_gradients(train), solved_chunks, strict=True):
            values.append((solved * loss_block).sum(1).cpu())
        return torch.cat(values).mul_(-1.0 / len(self.train))

    def config(self) -> dict:
        """Method name, solver configuration and attributed parameters."""
        return {"method": "influence", "solver": self.solver.config(), "parameters": self._names()}

    def _names(self) -> list[str] | str | None:
        if self.selected is not None or self.parameters is None:
            return self.selected
        if callable(self.parameters):  # not fitted yet: name the rule
            return f"{getattr(self.parameters, 'func', self.parameters).__name__}(model)"
        return list(self.parameters)

    def _require_fitted(self) -> Examples:
        if self.fitted_solver is None:
            raise RuntimeError("call fit(model, train) before scoring")
        return self.train

    def _gradients(self, data: Examples, function: str):
        return iter_per_sample_gradients(
            self.model,
            self.task,
            data.inputs,
            data.targets,
            function=function,
            parameters=self.selected,
            chunk_size=self.chunk_size,
        )

    def _loss_gradients(self, data: Examples):
        start = 0
        for block in self._gradients(data, "loss"):
            yield start, block
            start += len(block)

    def _solved_output_gradients(self, queries: Examples):
        self._require_fitted()
        for block in self._gradients(queries, "output"):
            solved = self.fitted_solver.solve(block)
            if not bool(torch.isfinite(solved).all()):
                raise SolverDivergedError(
                    f"the solver {self.solver.config()} returned non-finite vectors; "
                    "raise its damping or check its settings"
                )
            yield solved
