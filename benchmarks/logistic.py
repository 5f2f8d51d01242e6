"""Float64 multinomial logistic regression fitted exactly (full-batch L-BFGS to a tiny gradient),
and the ground-truth retrainer built on it: the convex reference of the digits benchmarks.

The objective is strictly convex, so the minimiser does not depend on the start or the seed, and a
refit on a subset is the exact counterfactual model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tda import ClassificationTask, Examples, LogisticRegression
from tda.outputs import task_outputs

TASK = ClassificationTask()


def _objective(theta: np.ndarray, inputs: np.ndarray, onehot: np.ndarray, l2: float):
    r""":math:`\frac1n\sum_i \mathrm{CE}(z_i) + \frac{\lambda}{2}\lVert\theta\rVert^2` and its
    gradient; ``theta`` flattens ``[classes, features + 1]`` (bias included in the penalty)."""
    weights = theta.reshape(onehot.shape[1], inputs.shape[1])
    logits = inputs @ weights.T
    logits = logits - logits.max(1, keepdims=True)
    log_normaliser = np.log(np.exp(logits).sum(1, keepdims=True))
    probabilities = np.exp(logits - log_normaliser)
    loss = -(onehot * (logits - log_normaliser)).sum(1).mean() + 0.5 * l2 * theta @ theta
    gradient = (probabilities - onehot).T @ inputs / len(inputs) + l2 * weights
    return loss, gradient.ravel()


def fit_logistic_regression(data: Examples, l2: float, tolerance: float = 1e-8):
    """Float64 multinomial LR from zeros by full-batch L-BFGS to ``max |grad| < tolerance``."""
    from scipy.optimize import minimize

    inputs = np.hstack([data.inputs.numpy(), np.ones((len(data), 1))])
    onehot = np.eye(10)[data.targets.numpy()]
    result = minimize(_objective, np.zeros(10 * inputs.shape[1]), (inputs, onehot, l2),
        method="L-BFGS-B", jac=True, options={"gtol": tolerance / 10, "ftol": 0.0,
        "maxiter": 100_000, "maxcor": 20})  # fmt: skip
    worst = float(np.abs(_objective(result.x, inputs, onehot, l2)[1]).max())
    if worst >= tolerance:
        raise FloatingPointError(f"L-BFGS stopped at max |grad| {worst:.2e} ({result.message})")
    theta = torch.from_numpy(result.x.reshape(10, -1))
    model = LogisticRegression(data.inputs.shape[1], 10).double()
    with torch.no_grad():
        model.weight.copy_(theta[:, :-1]), model.bias.copy_(theta[:, -1])
    return model.eval()


@dataclass(frozen=True)
class LogisticRetrainer:
    """Ground-truth ``measure``: refit on the subset, return the query margins. The seed is not
    used: the objective is strictly convex, so its minimiser does not depend on the start."""

    train: Examples
    queries: Examples
    l2: float

    def __call__(self, mask: np.ndarray, seed: int) -> np.ndarray:
        model = fit_logistic_regression(self.train.subset(np.asarray(mask)), self.l2)
        return task_outputs(model, TASK, self.queries).double().numpy()
