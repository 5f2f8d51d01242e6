r"""The head-difference predictor: how a final layer retrained on R differs from one on S.

The head refit (:mod:`unlearn.predictors.head`) is anchored at the original's final layer, so with
the small penalty a class's removal needs it keeps fitting :math:`R` where nothing was removed
(raising every retain margin); holding the other rows (``rows="absent"``) stops that but also
stops the other classes' logits from rising on the forgotten points, which the retrained models
show. This predictor fits the final layer :math:`(W, b)` from zero on the original's frozen
features :math:`\phi`, by regularised cross-entropy,

.. math::

    (\hat W_X, \hat b_X) = \arg\min_{W, b} \frac{1}{|X|}\sum_{i \in X}
        \ell\big(W\phi(x_i) + b, y_i\big) + \frac{\lambda}{2}\big(\lVert W\rVert^2
        + \lVert b\rVert^2\big),

twice: on the whole training set :math:`S` (the reference, once per model) and on :math:`R`
(per request, started from the reference), and predicts the original's outputs moved by the
difference,

.. math:: \hat f(x) = f(x; \theta_o) + (\hat W_R - \hat W_S)\,\phi(x) + (\hat b_R - \hat b_S).

Whatever the two fits share cancels; what removing :math:`F` changes remains: a removed class's
row loses its positive examples (its logits fall) and the other rows lose those negatives (their
logits rise on its points). The reference does not depend on the request: :meth:`prepare_model`
computes it ahead (attribution-like cost, one per model, serving every request on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.fingerprint import model_fingerprint
from unlearn.methods.base import ForgetSplit
from unlearn.predictors.base import Output, PredictorScope, training_set
from unlearn.predictors.head import (
    anchor_of,
    check_head_settings,
    final_layer,
    layer_outputs,
    penultimate_features,
    refit_layer,
)
from unlearn.predictors.layer_edit import LayerEdit

Layer = tuple[Tensor, Tensor]  # float64 weight [C, d] and bias [C] (zero without a bias)


@dataclass
class HeadDifferencePredictor:
    """Predicts the retrained model's outputs from the change of a final layer retrained on
    ``R`` instead of ``S`` (features frozen).

    Attributes:
        data: the training set (or splits whose ``.train`` it is).
        penalty: :math:`\\lambda` (positive), the ridge on the refitted layers.
        layer: name of the final ``nn.Linear`` module (default: the model's last one), whose
            output must be the model's logits.
        output: ``"logits"`` or ``"margin"``.
        max_iterations: L-BFGS iterations of the per-request fit on ``R`` (from the reference).
        reference_iterations: L-BFGS iterations of the reference fit on ``S`` (from zero).
    """

    data: Any
    penalty: float = 5e-5
    layer: str | None = None
    output: Output = "logits"
    max_iterations: int = 100
    reference_iterations: int = 1000
    _train: Examples = field(init=False, repr=False)
    _references: dict[str, Layer] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        iterations = {"max_iterations": self.max_iterations}
        iterations["reference_iterations"] = self.reference_iterations
        check_head_settings(self.output, self.penalty, **iterations)
        self._train = training_set(self.data)
        self.scope = PredictorScope(len(self._train), self._train.fingerprint())

    def check(self, model: nn.Module, split: ForgetSplit) -> None:
        self.scope.check(model, split)
        final_layer(model, self.layer)

    def prepare(self, forget_indices) -> None:
        """Nothing per forget set: the reference is per model (:meth:`prepare_model`)."""

    def prepare_model(self, model: nn.Module) -> None:
        """Fit ``model``'s reference layer on :math:`S` now (else the first request does)."""
        self.reference(model)

    def reference(self, model: nn.Module) -> Layer:
        """The layer fitted on :math:`S` to ``model``'s features, computed once per model class,
        state and layer (and kept for each seen: one ``[C, d]`` layer apiece). Two models of one
        class and state whose forward passes differ (a constructor setting without parameters)
        would share it: give each its own predictor."""
        name, layer = final_layer(model, self.layer)
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        key = f"{kind}:{model_fingerprint(model)}:{name}"  # the state alone ignores the code
        if key not in self._references:
            features = penultimate_features(model, layer, self._train)
            targets = self._train.targets.to(features.device)
            zero = _zero_layer(layer, features.device)
            settings = (self.penalty, self.reference_iterations)
            self._references[key] = refit_layer(
                features, targets, zero, *settings, dtype=layer.weight.dtype
            )
        return self._references[key]

    def audit_description(self) -> dict:
        """What the audit record says about this predictor."""
        settings = {"penalty": self.penalty, "layer": self.layer, "output": self.output}
        iterations = {"max_iterations": self.max_iterations}
        return {**settings, **iterations, "reference_iterations": self.reference_iterations}

    def targets(self, model, examples, positions, split, *, seed) -> Tensor:
        """The original's outputs moved by the two fits' difference on ``examples``: ``[n, C]``
        logits or ``[n]`` margins (in the model's dtype); ``seed`` is unused."""
        return layer_outputs(model, self.layer_edit(model, split), examples, self.output)

    def layer_edit(self, model: nn.Module, split: ForgetSplit) -> LayerEdit:
        """The original's final layer moved by the two fits' difference, float64 (what
        :meth:`targets` reads out)."""
        name, layer = final_layer(model, self.layer)
        reference_weight, reference_bias = self.reference(model)
        retain = self._train.subset(split.retain_indices)
        features = penultimate_features(model, layer, retain)
        weight, bias = refit_layer(
            features,
            retain.targets.to(features.device),
            _zero_layer(layer, features.device),
            self.penalty,
            self.max_iterations,
            start=(reference_weight, reference_bias),
            dtype=layer.weight.dtype,
        )
        original_weight, original_bias = anchor_of(layer, features.device)
        weight = original_weight + weight - reference_weight
        if original_bias is None:  # no bias fitted: both fits' are zero
            return LayerEdit(name, weight, None)
        return LayerEdit(name, weight, original_bias + bias - reference_bias)


def _zero_layer(layer: nn.Linear, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Zeros shaped like ``layer``'s weight and bias (``None`` without one), float64."""
    weight = torch.zeros(layer.weight.shape, dtype=torch.float64, device=device)
    bias = None if layer.bias is None else torch.zeros_like(weight[:, 0])
    return weight, bias
