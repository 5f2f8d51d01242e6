r"""Kernel machines on a precomputed kernel, exposing their decomposition over training examples.

A fitted machine predicts class scores (decision values) that are linear in kernel rows,

.. math:: \hat f_c(x) = \sum_i \alpha_{ic} K(x, z_i) + b_c,

with coefficients :math:`\alpha \in \mathbb{R}^{n \times C}` and intercepts :math:`b \in
\mathbb{R}^C` read from scikit-learn's fitted estimator, so each training example's term
:math:`\alpha_{ic} K(x, z_i)` is its share of the prediction (Engel et al. 2023, Sec. 3.3).

* :class:`KernelLogisticRegression`: multinomial logistic regression on the kernel rows
  :math:`K(x, \cdot)` as features (the empirical kernel map; ridge penalty on :math:`\alpha`).
* :class:`KernelSVM`: support vector machines with ``kernel="precomputed"``, one-vs-rest
  (one binary SVM per class; a single SVM for two classes).

Binary problems are written with two columns, :math:`\hat f_1 = d/2`, :math:`\hat f_0 = -d/2`,
where :math:`d` is scikit-learn's binary decision value, so every machine returns ``[q, C]``.
Kernels are divided by the mean diagonal of the training kernel before fitting (so one
regularisation strength suits kernels of any scale); :math:`\alpha` is reported on the raw scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from tda.ntk.kernel import check_kernel


class KernelMachine(Protocol):
    """Fits on a training kernel and labels; predicts ``K(x, z_i)`` -> ``[q, C]`` linearly."""

    coefficients: Tensor | None
    intercept: Tensor | None

    def fit(self, gram: Tensor, labels: Tensor, num_classes: int) -> KernelMachine: ...


@dataclass(frozen=True, eq=False)
class KernelLogisticRegression:
    """Multinomial logistic regression on kernel rows (scikit-learn ``LogisticRegression``).

    Args:
        inverse_regularization: scikit-learn's ``C`` (larger: weaker ridge on the coefficients).
        max_iter: L-BFGS iterations.
    """

    inverse_regularization: float = 10.0
    max_iter: int = 2000
    coefficients: Tensor | None = None  # [n, C] on the raw kernel scale
    intercept: Tensor | None = None  # [C]
    estimator: object | None = None  # the fitted scikit-learn estimator

    def fit(self, gram: Tensor, labels: Tensor, num_classes: int) -> KernelLogisticRegression:
        """A fitted copy for the training kernel ``gram`` ``[n, n]`` and labels ``[n]``."""
        from sklearn.linear_model import LogisticRegression

        scale, present = _prepare(gram, labels, num_classes)
        estimator = LogisticRegression(C=self.inverse_regularization, max_iter=self.max_iter)
        estimator.fit(gram.numpy() / scale, labels.numpy())
        coef = torch.from_numpy(estimator.coef_.T.copy()) / scale  # [n, C'] or [n, 1]
        intercept = torch.from_numpy(estimator.intercept_.copy())
        if len(present) == 2:
            coef, intercept = _two_columns(coef, intercept)
        coefficients, full_intercept = _embed(coef, intercept, present, num_classes, gram)
        return replace(
            self, coefficients=coefficients, intercept=full_intercept, estimator=estimator
        )


@dataclass(frozen=True, eq=False)
class KernelSVM:
    """One-vs-rest support vector machines on a precomputed kernel (scikit-learn ``SVC``).

    Args:
        inverse_regularization: scikit-learn's ``C``.
    """

    inverse_regularization: float = 1.0
    coefficients: Tensor | None = None
    intercept: Tensor | None = None
    estimator: object | None = None  # list of fitted SVCs, one per class (one for binary)

    def fit(self, gram: Tensor, labels: Tensor, num_classes: int) -> KernelSVM:
        """A fitted copy for the training kernel ``gram`` ``[n, n]`` and labels ``[n]``."""
        scale, present = _prepare(gram, labels, num_classes)
        scaled = gram.numpy() / scale
        targets = labels.numpy()
        positives = present[1:] if len(present) == 2 else present
        columns, intercepts, estimators = [], [], []
        for cls in positives:
            column, intercept, estimator = self._binary(scaled, targets == cls)
            columns.append(column / scale)
            intercepts.append(intercept)
            estimators.append(estimator)
        coef, intercept = torch.stack(columns, 1), torch.tensor(intercepts, dtype=torch.float64)
        if len(present) == 2:
            coef, intercept = _two_columns(coef, intercept)
        coefficients, full_intercept = _embed(coef, intercept, present, num_classes, gram)
        return replace(
            self, coefficients=coefficients, intercept=full_intercept, estimator=estimators
        )

    def _binary(self, scaled: np.ndarray, positive: np.ndarray):
        from sklearn.svm import SVC

        estimator = SVC(kernel="precomputed", C=self.inverse_regularization)
        estimator.fit(scaled, positive)
        column = torch.zeros(len(positive), dtype=torch.float64)
        # dual_coef_ holds y_i * a_i of the support vectors; decision > 0 means classes_[1] = True
        column[torch.from_numpy(estimator.support_)] = torch.from_numpy(estimator.dual_coef_[0])
        return column, float(estimator.intercept_[0]), estimator


def decision_function(machine: KernelMachine, kernel: Tensor) -> Tensor:
    r"""Class scores ``[q, C]``: :math:`K\alpha + b` for kernel rows ``kernel`` ``[q, n]``."""
    _check_fitted(machine, kernel)
    return kernel.to(torch.float64) @ machine.coefficients + machine.intercept


def contributions(machine: KernelMachine, kernel: Tensor, weights: Tensor) -> Tensor:
    r"""Each training example's term in :math:`\sum_c w_{qc} \hat f_c(x_q)`, ``[q, n]``.

    ``terms[q, i] = K(x_q, z_i) \sum_c \alpha_{ic} w_{qc}``; the row sums plus
    :math:`w_q \cdot b` equal the weighted decision values exactly.

    Args:
        machine: a fitted kernel machine.
        kernel: kernel rows ``[q, n]`` between the queries and the training examples.
        weights: class weights ``[q, C]`` of the attributed combination of decision values.
    """
    _check_fitted(machine, kernel)
    return kernel.to(torch.float64) * (weights.to(torch.float64) @ machine.coefficients.T)


def _two_columns(coef: Tensor, intercept: Tensor) -> tuple[Tensor, Tensor]:
    """Binary decision ``d`` as class scores ``(-d/2, d/2)``."""
    return torch.cat([-coef, coef], 1) / 2, torch.cat([-intercept, intercept]) / 2


def _prepare(gram: Tensor, labels: Tensor, num_classes: int) -> tuple[float, list[int]]:
    check_kernel(gram, "training kernel")
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] != len(labels):
        raise ValueError(
            f"need a square training kernel matching {len(labels)} labels, got {tuple(gram.shape)}"
        )
    present = sorted(int(c) for c in torch.unique(labels))
    if len(present) < 2:
        raise ValueError(
            f"the labels hold only class {present}: a surrogate needs at least two classes"
        )
    if present[0] < 0 or present[-1] >= num_classes:
        raise ValueError(f"labels {present} fall outside 0..{num_classes - 1}")
    scale = float(torch.diagonal(gram).mean())
    if not scale > 0:
        raise ValueError(f"the training kernel's mean diagonal is {scale}; it must be positive")
    return scale, present


def _embed(coef, intercept, present, num_classes, gram):
    """Place fitted columns at their classes; never-predicted classes get zero coefficients
    and an intercept one below every fitted training decision, so they are never chosen."""
    coefficients = torch.zeros(gram.shape[0], num_classes, dtype=torch.float64)
    full = torch.empty(num_classes, dtype=torch.float64)
    index = torch.tensor(present)
    coefficients[:, index] = coef.to(torch.float64)
    full[index] = intercept.to(torch.float64)
    missing = [c for c in range(num_classes) if c not in set(present)]
    if missing:
        lowest = float((gram.to(torch.float64) @ coefficients[:, index] + full[index]).min())
        full[torch.tensor(missing)] = lowest - 1.0
    return coefficients, full


def _check_fitted(machine: KernelMachine, kernel: Tensor) -> None:
    if machine.coefficients is None:
        raise RuntimeError("fit the kernel machine before asking for decision values")
    if kernel.ndim != 2 or kernel.shape[1] != machine.coefficients.shape[0]:
        raise ValueError(
            f"kernel rows must be [q, {machine.coefficients.shape[0]}] (one column per training "
            f"example), got {tuple(kernel.shape)}"
        )
