r"""The head-refit predictor: the original's final linear layer refitted on the retain set.

Attribution predictors are linear in the forget set: the effect of removing :math:`F` is the sum
of its examples' effects. That is what fails class-wise, where removing a whole class moves the
retrained model far beyond any sum of single-example effects (its logit for that class collapses).
This predictor is non-linear in :math:`F` instead. It keeps the original's features
:math:`\phi(x)` (every layer but the last, frozen) and refits only the final layer
:math:`(W, b)` on :math:`R` by regularised cross-entropy, exactly (a convex problem, solved in
float64 by L-BFGS), anchored at the original's layer :math:`(W_o, b_o)`:

.. math::

    \hat W, \hat b = \arg\min_{W, b} \frac{1}{|R|}\sum_{i \in R}
        \ell\big(W\phi(x_i) + b, y_i\big)
        + \frac{\lambda}{2}\big(\lVert W - W_o\rVert^2 + \lVert b - b_o\rVert^2\big),

and predicts :math:`\hat f(x) = \hat W \phi(x) + \hat b` on any training point. For a model that
is a single linear layer (:math:`\phi(x) = x`, logistic regression) it is exact retraining on
:math:`R` with that objective. The penalty :math:`\lambda` sets how far the refit moves: with no
example of a class left, that class's logits fall without bound as :math:`\lambda \to 0`.

With ``rows="absent"`` only the rows of the classes the request removes entirely are refitted,
the others held at the original's (:mod:`unlearn.predictors.absent_rows`, Newton's method). The
full refit also moves what removing :math:`F` does not: with a small penalty it keeps fitting
:math:`R` (on the MNIST-1D MLP at 1e-7 it raises retain margins by about 17 on average, where the
retrained models' move by under 1); holding the other rows leaves them where they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.grads import evaluation_mode
from tda.outputs import logits_of
from tda.task import ClassificationTask
from unlearn.methods.base import ForgetSplit
from unlearn.predictors.absent_rows import absent_classes, refit_rows
from unlearn.predictors.base import Output, PredictorScope, check_output, training_set
from unlearn.predictors.layer_edit import LayerEdit
from unlearn.predictors.lbfgs import minimize

Rows = Literal["all", "absent"]
ROWS = ("all", "absent")


@dataclass
class HeadRefitPredictor:
    """Predicts the retrained model's outputs by refitting the final linear layer on ``R``.

    Attributes:
        data: the training set (or splits whose ``.train`` it is).
        penalty: :math:`\\lambda`, the pull towards the original's final layer (positive).
        layer: name of the final ``nn.Linear`` module (default: the model's last one), whose
            output must be the model's logits.
        output: ``"logits"`` or ``"margin"``.
        max_iterations: iterations of the refit at most (it stops earlier once converged):
            L-BFGS for ``rows="all"``, where small penalties converge slowly (on the MNIST-1D MLP
            at 1e-7, 200 iterations give the proxy classes' mean predicted margin shifts within
            0.3% of 500 iterations', ``experiments/dmm_head_penalty.py --iterations``; 100
            overshoot them by 28-110%); Newton for ``rows="absent"`` (about 10 suffice).
        rows: ``"all"`` refits the whole layer; ``"absent"`` only the rows of the classes with
            no example left in :math:`R`, holding the others (a request must remove a class).
    """

    data: Any
    penalty: float = 1e-6
    layer: str | None = None
    output: Output = "logits"
    max_iterations: int = 200
    rows: Rows = "all"
    _train: Examples = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_head_settings(self.output, self.penalty, max_iterations=self.max_iterations)
        if self.rows not in ROWS:
            raise ValueError(f"rows must be one of {ROWS}, got {self.rows!r}")
        self._train = training_set(self.data)
        self.scope = PredictorScope(len(self._train), self._train.fingerprint())

    def check(self, model: nn.Module, split: ForgetSplit) -> None:
        self.scope.check(model, split)
        _, layer = final_layer(model, self.layer)
        if self.rows == "absent":
            _removed_classes(split, layer)

    def prepare(self, forget_indices: np.ndarray) -> None:
        """Nothing to do ahead of time: the refit needs the model, so it runs per request."""

    def audit_description(self) -> dict:
        """What the audit record says about this predictor."""
        settings = {"penalty": self.penalty, "layer": self.layer}
        iterations = {"max_iterations": self.max_iterations, "rows": self.rows}
        return {"output": self.output, **settings, **iterations}

    def targets(self, model, examples, positions, split, *, seed) -> Tensor:
        """Refitted-layer outputs on ``examples``: ``[n, C]`` logits or ``[n]`` margins (in the
        model's dtype); ``seed`` is unused (the refit is deterministic)."""
        return layer_outputs(model, self.layer_edit(model, split), examples, self.output)

    def layer_edit(self, model: nn.Module, split: ForgetSplit) -> LayerEdit:
        """The refitted final layer, float64 (what :meth:`targets` reads out)."""
        name, layer = final_layer(model, self.layer)
        retain = self._train.subset(split.retain_indices)
        features = penultimate_features(model, layer, retain)
        weight, bias = anchor_of(layer, features.device)
        if self.rows == "all":
            targets = retain.targets.to(features.device)
            settings = (self.penalty, self.max_iterations)
            weight, fitted_bias = refit_layer(
                features, targets, (weight, bias), *settings, dtype=layer.weight.dtype
            )
            return LayerEdit(name, weight, None if bias is None else fitted_bias)
        rows = _removed_classes(split, layer)
        weight, bias = refit_rows(features, weight, bias, rows, self.penalty, self.max_iterations)
        return LayerEdit(name, weight, bias)


def check_head_settings(output: str, penalty: float, **iterations: int) -> None:
    """Refuse an unknown output, a penalty that is not positive and finite, or an iteration
    count (named by its keyword) below 1."""
    check_output(output)
    if not 0 < penalty < float("inf"):
        raise ValueError(f"penalty must be positive and finite, got {penalty}")
    for name, count in iterations.items():
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")


def _removed_classes(split: ForgetSplit, layer: nn.Linear) -> list[int]:
    """The classes ``split`` removes entirely; refused if none."""
    rows = absent_classes(split, layer.out_features)
    if not rows:
        raise ValueError(
            "rows='absent' refits the classes a request removes entirely, and this forget "
            "set leaves an example of every class it touches in the retain set"
        )
    return rows


def anchor_of(layer: nn.Linear, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The layer's weight and bias (``None`` without one) in float64 on ``device``."""
    weight = layer.weight.detach().to(device, torch.float64)
    bias = None if layer.bias is None else layer.bias.detach().to(device, torch.float64)
    return weight, bias


def layer_outputs(model: nn.Module, edit: LayerEdit, examples: Examples, output) -> Tensor:
    """Logits ``[n, C]`` or margins ``[n]`` on ``examples`` with the layer ``edit`` names
    replaced by its float64 weight and bias, in the model's dtype."""
    layer = dict(model.named_modules())[edit.name]
    logits = penultimate_features(model, layer, examples) @ edit.weight.T
    logits = logits if edit.bias is None else logits + edit.bias
    logits = logits.to(next(model.parameters()).dtype)
    if output == "logits":
        return logits
    return ClassificationTask().output(logits, examples.targets.to(logits.device))


def final_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """The ``nn.Linear`` module named ``name`` (default: the model's last one).

    Raises:
        ValueError: no such module, or it is not an ``nn.Linear``.
    """
    modules = dict(model.named_modules())
    if name is None:
        linear = [key for key, module in modules.items() if isinstance(module, nn.Linear)]
        if not linear:
            raise ValueError("the model has no nn.Linear layer to refit")
        name = linear[-1]
    if not isinstance(modules.get(name), nn.Linear):
        found = type(modules[name]).__name__ if name in modules else "no module"
        raise ValueError(f"layer {name!r} must be the model's final nn.Linear, found {found}")
    return name, modules[name]


@torch.no_grad()
def penultimate_features(model: nn.Module, layer: nn.Linear, examples: Examples) -> Tensor:
    """The inputs :math:`\\phi(x)` ``[n, d]`` of ``layer`` on ``examples`` (eval mode), in
    float64, checked to give the model's logits through ``layer``.

    Raises:
        ValueError: ``layer`` is called other than once per forward pass, on other than one
            ``[b, d]`` input, or its output is not the model's logits.
    """
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _, args, __: seen.append(args[0].detach()))
    try:
        with evaluation_mode(model):
            logits = logits_of(model, examples)
    finally:
        handle.remove()
    if not seen or sum(len(s) for s in seen) != len(examples) or seen[0].ndim != 2:
        raise ValueError(
            "the layer to refit must be called once per example on a [batch, features] input"
        )
    features = torch.cat(seen).to(logits.device, torch.float64)
    through = features @ layer.weight.double().T
    through = through + layer.bias.double() if layer.bias is not None else through
    if through.shape != logits.shape or not torch.allclose(
        through, logits.double(), rtol=1e-4, atol=1e-4
    ):
        raise ValueError("the layer to refit does not give the model's logits: name the final one")
    return features


def refit_layer(
    features: Tensor,
    targets: Tensor,
    anchor: tuple[Tensor, Tensor | None],
    penalty: float,
    max_iterations: int,
    start: tuple[Tensor, Tensor | None] | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """The minimiser :math:`(\\hat W, \\hat b)` of the module docstring's objective, float64, by
    L-BFGS (:mod:`unlearn.predictors.lbfgs`) with the gradient written out (no autograd).

    Args:
        features: :math:`\\phi(x_i)` ``[n, d]`` of the points fitted (float64).
        targets: their class indices ``[n]``.
        anchor: :math:`(W_o, b_o)`, float64; ``b_o`` ``None`` for a layer without a bias (then
            no bias is fitted and the returned one is zero).
        penalty: :math:`\\lambda`.
        max_iterations: L-BFGS iterations at most.
        start: where the iterations start (default: the anchor).
        dtype: the dtype of each evaluation's work over the points (the two products with the
            features and the softmax; sums, value and gradient are float64): the model's, since
            float32 features carry no more digits (on CPU about 2x faster than float64, at the
            same accuracy of the fit: the steps are certified by the gradient, see
            :mod:`unlearn.predictors.lbfgs`).
    """
    anchor_weight, anchor_bias = anchor
    fit_bias = anchor_bias is not None
    start_weight, start_bias = start if start is not None else anchor
    if fit_bias:
        features = torch.cat([features, torch.ones_like(features[:, :1])], 1)
        anchor_weight = torch.cat([anchor_weight, anchor_bias[:, None]], 1)
        start_weight = torch.cat([start_weight, start_bias[:, None]], 1)
    shape, count = anchor_weight.shape, len(targets)
    rows, columns = features.to(dtype), features.T.to(dtype).contiguous()  # [n, d], [d, n]
    labels = targets[None]  # [1, n]
    minus_one = torch.full((1, count), -1.0, dtype=dtype, device=features.device)
    anchor_flat = anchor_weight.reshape(-1)

    def objective(flat: Tensor) -> tuple[Tensor, Tensor]:
        """The objective and its gradient at the flattened ``[W, b]``."""
        logits = flat.view(shape).to(dtype) @ columns  # [C, n]: softmax over rows
        top = logits.max(0, keepdim=True).values
        probabilities = torch.exp(logits - top)
        total = probabilities.sum(0, keepdim=True)
        lse = (top + torch.log(total)).double().sum()
        loss = (lse - logits.gather(0, labels).double().sum()) / count
        residual = probabilities.div_(total).scatter_add_(0, labels, minus_one)  # p - onehot
        gradient = (residual @ rows).double().reshape(-1) / count
        distance = flat - anchor_flat
        return loss + penalty / 2 * distance.square().sum(), gradient + penalty * distance

    fitted = minimize(objective, start_weight.reshape(-1), max_iterations).view(shape)
    if not fit_bias:
        return fitted, torch.zeros_like(fitted[:, 0])
    return fitted[:, :-1].contiguous(), fitted[:, -1].contiguous()
