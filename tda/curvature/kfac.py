r"""K-FAC and EK-FAC inverse-HVP solvers for models made of Linear and convolution layers.

Both approximate the curvature :math:`H` of the mean training loss by the block-diagonal Fisher of
the layers in the Kronecker-factored eigenbasis of :mod:`tda.curvature.kronecker`, and apply

.. math::
    (H_l + \lambda I)^{-1} \operatorname{vec}(V) = \operatorname{vec}\bigl(Q_S
    [(Q_S^\top V Q_A) \oslash (\Lambda + \lambda)] Q_A^\top\bigr)

per layer: K-FAC with :math:`\Lambda_{ij} = s_i \alpha_j` (Martens & Grosse 2015), EK-FAC with the
eigenvalues refitted to the per-example gradients (George et al. 2018; Grosse et al. 2023).
Weights and biases of ``nn.Linear`` and ``groups=1`` ``nn.Conv1d`` / ``nn.Conv2d`` layers are
supported (a convolution as a Linear layer over its input patches, the KFC factors of Grosse &
Martens 2016); other trainable parameters (grouped convolutions, normalisation, embeddings) raise
unless ``parameters`` leaves them out.

Defaults, and why:

* ``sampled_labels=False``: the loss gradients use the training labels (the empirical Fisher),
  chosen by data, not by principle. ``True`` draws labels from the model's softmax (one draw per
  example, seeded), which makes the Fisher an unbiased estimate of the Gauss-Newton matrix of
  cross-entropy (the true Fisher; kronfluence's default). ``benchmarks/bench_fisher.py``
  (``results/fisher-choice.json``) picks the Fisher by LDS on a selection half of the
  ground-truth subsets and reports the other half (``select_damping``'s split). On the MNIST-1D
  MLP (200 queries, 100 subsets x 3 seeds) the empirical Fisher wins for both solvers and both
  ensemble sizes; report-half LDS, EK-FAC at M = 1 / 5: 0.207 / 0.333 empirical vs
  0.159 / 0.286 sampled (K-FAC: 0.210 / 0.339 vs 0.162 / 0.290), and no damping from
  1e-4 to 1 x the mean eigenvalue closes the gap for the sampled labels. On a well-fit network
  the empirical Fisher weighs the examples that are still badly fit, where removal moves the
  model most. It is not universal: on the convex digits logistic regression (damping = its L2
  coefficient, where the Gauss-Newton matrix is the exact Hessian) the sampled labels are
  better, 0.817 vs 0.725 (EK-FAC, report half); use ``sampled_labels=True`` there, and compare
  both (``bench_fisher``) on a new kind of model. The empirical Fisher is also deterministic
  (``seed`` is then unused). Sampling assumes the logits parameterise a softmax.
* ``damping=None``: :math:`\lambda = 0.1 \times` the mean eigenvalue over all layers
  (``RELATIVE_DAMPING``; the heuristic of Grosse et al. 2023 and kronfluence, which apply it per
  layer; here it is one global scalar, so ``solve`` is exactly :math:`(H + \lambda I)^{-1}` and
  the fitted solver's ``damping`` is that :math:`\lambda`). It scales with the loss and model, so
  no value has to be tuned per model; pass a float for an absolute :math:`\lambda`, another
  fraction as ``relative_damping``, or change it after fitting with
  ``replace(fitted, damping=r * fitted.mean_eigenvalue)``. On the MNIST-1D CNN the data choose a
  smaller fraction, 0.001 (``benchmarks/bench_conv_ekfac.py``): the default over-damps the
  convolutions.
* ``per_layer=False``: with ``True`` (and ``damping=None``) each layer gets
  :math:`\lambda_l =` ``relative_damping`` :math:`\times` its own mean eigenvalue (kronfluence's
  heuristic), so ``solve`` is the block-diagonal :math:`(H_l + \lambda_l I)^{-1}`
  (``layer_dampings``): layers of very different curvature scales (convolutions, whose gradients
  sum over positions, beside a linear head) are each damped at their own scale. Not the default:
  on the MNIST-1D CNN it gives the same LDS as the global damping.

A fitted solver's ``layers`` hold each layer's :class:`~tda.curvature.kronecker.KroneckerEigenbasis`
(:math:`Q_S`, :math:`Q_A`, :math:`\Lambda`); other matrix functions of the same curvature are
elementwise in it (:func:`~tda.curvature.kronecker.apply_in_eigenbasis`). The model is evaluated
in eval mode (dropout off, normalisation statistics frozen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, TypeVar

import torch
from torch import Tensor, nn

from tda.curvature.base import check_damping, check_vectors
from tda.curvature.kronecker import (
    KroneckerEigenbasis,
    apply_in_eigenbasis,
    fit_kronecker_eigenbases,
)
from tda.data.examples import Examples
from tda.task import Task

SolverT = TypeVar("SolverT", bound="_KroneckerSolver")

RELATIVE_DAMPING = 0.1
"""Default ``relative_damping``: the damping as a fraction of the mean curvature eigenvalue."""


@dataclass(frozen=True, eq=False)
class _KroneckerSolver:
    """The body of :class:`KFACSolver` and :class:`EKFACSolver`; they differ in ``corrected``."""

    damping: float | None = None
    sampled_labels: bool = False
    seed: int = 0
    chunk_size: int = 256
    layers: tuple[KroneckerEigenbasis, ...] | None = None
    per_layer: bool = False
    relative_damping: float = RELATIVE_DAMPING

    corrected: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.damping is not None:
            if isinstance(self.damping, bool) or not isinstance(self.damping, int | float):
                raise ValueError(f"damping must be a number or None, got {self.damping!r}")
            check_damping(self.damping)
        if not isinstance(self.sampled_labels, bool):
            raise ValueError(f"sampled_labels must be a bool, got {self.sampled_labels!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int):
            raise ValueError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {self.chunk_size!r}")
        relative = self.relative_damping
        if isinstance(relative, bool) or not isinstance(relative, int | float):
            raise ValueError(f"relative_damping must be a number, got {relative!r}")
        check_damping(relative)
        if not isinstance(self.per_layer, bool):
            raise ValueError(f"per_layer must be a bool, got {self.per_layer!r}")
        if self.per_layer and self.damping is not None:
            raise ValueError(
                "per_layer=True damps each layer by relative_damping x its own mean eigenvalue: "
                f"leave damping None (got {self.damping})"
            )
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))

    def fit(
        self: SolverT,
        model: nn.Module,
        task: Task,
        train: Examples,
        *,
        parameters: Sequence[str] | None = None,
    ) -> SolverT:
        """A copy fitted to the mean ``task.loss`` over ``train`` at the model's parameters.

        Its ``layers`` hold the eigenbases and its ``damping`` the absolute :math:`\\lambda`
        (resolved from the heuristic when this solver's ``damping`` is None).

        Raises:
            ValueError: no examples, trainable parameters outside the supported layers (pass
                ``parameters`` naming only theirs), or a selected layer that the
                forward pass never calls on the way to the loss.
        """
        layers = fit_kronecker_eigenbases(
            model,
            task,
            train,
            parameters=parameters,
            corrected=self.corrected,
            sampled_labels=self.sampled_labels,
            seed=self.seed,
            chunk_size=self.chunk_size,
        )
        fitted = replace(self, layers=layers)
        if self.damping is None and not self.per_layer:
            fitted = replace(fitted, damping=self.relative_damping * fitted.mean_eigenvalue)
        return fitted

    @property
    def mean_eigenvalue(self) -> float:
        r"""Mean of :math:`\Lambda` over every layer: :math:`\operatorname{tr}(H) / p`."""
        layers = self._fitted_layers()
        total = sum(float(layer.eigenvalues.sum()) for layer in layers)
        return total / sum(layer.parameter_count for layer in layers)

    def solve(self, vectors: Tensor) -> Tensor:
        r"""``[q, p] -> [q, p]``: :math:`(H + \lambda I)^{-1} v` per row, in the dtype of ``v``.

        Raises:
            RuntimeError: the solver is not fitted.
            ValueError: ``vectors`` is not ``[q, p]``, or :math:`\lambda = 0` meets a zero
                eigenvalue (the curvature is singular: use damping > 0).
        """
        size = None if self.layers is None else sum(b.parameter_count for b in self.layers)
        check_vectors(vectors, size, type(self).__name__)
        damped = []
        for layer, damping in zip(self.layers, self.layer_dampings, strict=True):
            if not bool((layer.eigenvalues + damping > 0).all()):
                raise ValueError(
                    f"layer '{layer.module}' has zero curvature eigenvalues and damping is "
                    f"{damping}; the curvature is singular: use damping > 0"
                )
            damped.append(replace(layer, eigenvalues=layer.eigenvalues + damping))
        return apply_in_eigenbasis(damped, vectors, torch.reciprocal)

    @property
    def layer_dampings(self) -> tuple[float, ...]:
        r""":math:`\lambda_l` of each fitted layer: ``damping``, or with ``per_layer``
        ``relative_damping`` x the layer's own mean eigenvalue."""
        layers = self._fitted_layers()
        if self.per_layer:
            return tuple(
                self.relative_damping * float(layer.eigenvalues.mean()) for layer in layers
            )
        return (self._damping_value(),) * len(layers)

    def config(self) -> dict:
        """Solver name and hyperparameters (``damping`` None: the relative default, unfitted)."""
        return {
            "solver": self.name,
            "damping": self.damping,
            "sampled_labels": self.sampled_labels,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "per_layer": self.per_layer,
            "relative_damping": self.relative_damping,
        }

    def _fitted_layers(self) -> tuple[KroneckerEigenbasis, ...]:
        if self.layers is None:
            raise RuntimeError(f"call {type(self).__name__}.fit(model, task, train) first")
        return self.layers

    def _damping_value(self) -> float:
        if self.damping is not None:
            return float(self.damping)
        return self.relative_damping * self.mean_eigenvalue


@dataclass(frozen=True, eq=False)
class KFACSolver(_KroneckerSolver):
    r"""K-FAC: :math:`H_l \approx S \otimes A`, inverted in the factors' eigenbases.

    One pass over the training data. See the module doc for the defaults.

    Args:
        damping: absolute :math:`\lambda`, or None for ``0.1 x`` the mean eigenvalue.
        sampled_labels: empirical Fisher (training labels, default; see the module doc) or
            true Fisher (labels sampled from the model).
        seed: seed of the sampled labels (unused by the empirical Fisher).
        chunk_size: examples per forward/backward pass.
        layers: the fitted eigenbases (set by ``fit``; pass them to re-use a fit).
        per_layer: damp each layer by ``relative_damping`` x its own mean eigenvalue (``damping``
            must be None).
        relative_damping: the fraction of the mean eigenvalue used when ``damping`` is None.
    """

    corrected: ClassVar[bool] = False
    name: ClassVar[str] = "kfac"


@dataclass(frozen=True, eq=False)
class EKFACSolver(_KroneckerSolver):
    r"""EK-FAC: K-FAC's eigenbases with eigenvalues refitted to per-example gradients.

    Two passes over the training data (factors, then eigenvalues). The refitted
    :math:`\Lambda_{ij} = \frac1N\sum_n [Q_S^\top G_n Q_A]_{ij}^2` is the exact diagonal of each
    layer's Fisher block in the Kronecker eigenbasis, so EK-FAC is never further from that block
    (in Frobenius norm) than K-FAC. Arguments as for :class:`KFACSolver`.
    """

    corrected: ClassVar[bool] = True
    name: ClassVar[str] = "ekfac"
