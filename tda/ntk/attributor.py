r"""NTK surrogate attribution: a kernel machine on the network's empirical NTK, read term by term.

``fit(model, train)`` computes the kernel's training features and Gram matrix and fits the kernel
machine to the **network's predictions** on the training set (the surrogate imitates the
network, not the labels). For a query :math:`x` with target class :math:`y`, the attributed output
is the surrogate's margin-like contrast

.. math:: \hat m(x) = \hat f_y(x) - \frac{1}{C-1}\sum_{k \ne y} \hat f_k(x)
          = \sum_i \underbrace{K(x, z_i)\Big(\alpha_{iy} - \frac{1}{C-1}\sum_{k\ne y}
            \alpha_{ik}\Big)}_{\tau(x)_i} + \text{bias}(x),

(for two classes, :math:`\pm` the binary decision value) and ``score`` returns the terms
:math:`\tau(x)_i`. Sign convention of the library: :math:`\tau(x)_i > 0` means training example
:math:`i` pushes the (surrogate's) output for the query's class up. The contrast does not change
when every class score moves by the same amount, as the network's margin does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tda.data.examples import Examples, as_examples
from tda.ntk.faithfulness import FaithfulnessReport, faithfulness
from tda.ntk.kernel import EmpiricalNTK, kernel_from_features
from tda.ntk.surrogate import (
    KernelLogisticRegression,
    KernelMachine,
    contributions,
    decision_function,
)
from tda.outputs import logits_of


@dataclass
class NTKSurrogate:
    """Attributor through a kernel-machine surrogate of the network on its empirical NTK.

    Args:
        kernel: which NTK (trace / pseudo, exact / projected) and its memory limit.
        machine: the kernel machine, e.g. ``KernelLogisticRegression()`` or ``KernelSVM()``.
    """

    kernel: EmpiricalNTK = field(default_factory=EmpiricalNTK)
    machine: KernelMachine = field(default_factory=KernelLogisticRegression)
    model: nn.Module | None = field(default=None, init=False, repr=False)
    train: Examples | None = field(default=None, init=False, repr=False)
    fitted: KernelMachine | None = field(default=None, init=False, repr=False)
    train_features: Tensor | None = field(default=None, init=False, repr=False)

    def fit(self, model: nn.Module, train: Any, *, progress: bool = True) -> NTKSurrogate:
        """Compute the training kernel and fit the machine to the network's predictions.

        ``train`` (and the queries of the other methods) is ``Examples`` or anything
        :func:`tda.as_examples` reads (e.g. ``(X, y)`` arrays). The model must not change
        afterwards (query kernels read its parameters). ``progress`` shows which of the three
        stages runs (features, Gram matrix, machine fit); on thousands of examples the
        machine's fit (scikit-learn's) takes most of the time. A fit that raises leaves the
        surrogate as it was.

        Raises:
            ValueError: fewer than 2 examples, or floating inputs of another dtype than the model.
            KernelTooLargeError: the training features and Gram matrix exceed the memory limit.
            DegenerateKernelError: the training kernel is non-finite or constant.
        """
        train = as_examples(train)
        if len(train) < 2:
            raise ValueError(f"need at least 2 training examples, got {len(train)}")
        self.kernel.check_memory(model, train.inputs, n_left=0, n_right=len(train), square=True)
        with tqdm(total=3, desc="NTK surrogate", disable=not progress) as stages:
            stages.set_postfix_str(f"{self.kernel.kind} features of {len(train)} examples")
            features = self.kernel.features(model, train.inputs)
            stages.update()
            stages.set_postfix_str(f"{len(train)} x {len(train)} Gram matrix")
            gram = kernel_from_features(features, features)
            stages.update()
            stages.set_postfix_str(f"fitting {type(self.machine).__name__}")
            logits = logits_of(model, train)
            predictions = logits.argmax(1).cpu()
            fitted = self.machine.fit(gram.cpu(), predictions, logits.shape[1])
            stages.update()
        self.model, self.train, self.train_features, self.fitted = model, train, features, fitted
        return self

    def kernel_rows(self, queries: Any) -> Tensor:
        """``K(x_q, z_i)`` ``[q, n_train]`` (float64) between queries and training examples.

        Raises:
            KernelTooLargeError: the kept training features, these rows and one chunk exceed
                the kernel's memory limit (split the queries).
        """
        self._require_fitted()
        inputs = as_examples(queries).inputs
        self.kernel.check_memory(self.model, inputs, n_left=len(inputs), n_right=len(self.train))
        return self.kernel.cross_matrix(self.model, inputs, self.train_features).cpu()

    def decision_function(self, queries: Any) -> Tensor:
        r"""Surrogate class scores :math:`\hat f(x)` ``[q, C]``."""
        return decision_function(self.fitted, self.kernel_rows(queries))

    def score(self, queries: Any) -> Tensor:
        r"""Attribution scores :math:`\tau(x_q)_i` ``[n_query, n_train]`` (module docstring)."""
        queries = as_examples(queries)
        rows = self.kernel_rows(queries)
        return contributions(self.fitted, rows, self._contrast(queries.targets))

    def bias(self, queries: Any) -> Tensor:
        """The intercept's share of each query's contrast ``[q]``: ``score`` rows sum to the
        contrast minus this."""
        self._require_fitted()
        return self._contrast(as_examples(queries).targets) @ self.fitted.intercept

    def surrogate_output(self, queries: Any) -> Tensor:
        r"""The attributed contrast :math:`\hat m(x_q)` ``[q]`` of each query's target class."""
        queries = as_examples(queries)
        scores = self.decision_function(queries)
        return (scores * self._contrast(queries.targets)).sum(1)

    def faithfulness(self, queries: Any) -> FaithfulnessReport:
        """Kendall tau and agreement between surrogate and network on held-out ``queries``."""
        queries = as_examples(queries)
        surrogate = self.decision_function(queries)
        return faithfulness(logits_of(self.model, queries).cpu(), surrogate)

    def _contrast(self, targets: Tensor) -> Tensor:
        """Class weights ``[q, C]``: 1 for the target, ``-1/(C-1)`` for every other class.

        Raises:
            ValueError: targets that are not ``[q]`` class indices in ``0..C-1``.
        """
        classes = self.fitted.coefficients.shape[1]
        targets = targets.cpu().long()
        if targets.ndim != 1 or bool(((targets < 0) | (targets >= classes)).any()):
            raise ValueError(
                f"query targets must be [q] class indices in 0..{classes - 1}, got shape "
                f"{tuple(targets.shape)} with values {sorted(set(targets.flatten().tolist()))[:10]}"
            )
        weights = torch.full((len(targets), classes), -1.0 / (classes - 1), dtype=torch.float64)
        weights[torch.arange(len(targets)), targets] = 1.0
        return weights

    def _require_fitted(self) -> None:
        if self.fitted is None:
            raise RuntimeError("call fit(model, train) before scoring")
