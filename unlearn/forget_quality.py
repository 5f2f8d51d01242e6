r"""TOFU-style evaluation of an unlearned language model on question-answer facts.

For a fact with question :math:`q`, true answer :math:`a` and perturbed answers
:math:`\tilde a_1 \ldots \tilde a_k` (:class:`~tda.data.facts.FactSet`), a model's length-normalised
answer probability is :math:`\bar P(a \mid q) = P(a \mid q)^{1/|a|}` and its **truth ratio**

.. math:: R = \frac{\frac{1}{k}\sum_j \bar P(\tilde a_j \mid q)}{\bar P(a \mid q)}

(small: it prefers the truth; near or above 1: it does not know it). **Forget quality** is the
p-value of a two-sample Kolmogorov-Smirnov test between the truth ratios of the unlearned model
and of a model trained without the forget set, on the forget facts (high: indistinguishable from
never having seen them; Maini et al. 2024). **Model utility** on facts that should stay known is
the harmonic mean of their mean :math:`\bar P(a \mid q)` and their mean truth score
:math:`\max(0, 1 - R)`, TOFU's two measures there that need no generated text.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from torch import nn

from tda.data.examples import Examples
from tda.data.facts import FactSet
from tda.indices import integer_positions
from tda.task import IGNORE_INDEX
from unlearn.metrics import true_label_probability


def answer_probabilities(model: nn.Module, examples: Examples) -> np.ndarray:
    r""":math:`\bar P(a \mid q) = \exp(\log P(a \mid q) / |a|)` ``[n]`` over the counted tokens.

    Raises:
        ValueError: an example with no counted (answer) token.
    """
    if not bool((examples.targets != IGNORE_INDEX).reshape(len(examples), -1).any(1).all()):
        raise ValueError("every example needs at least one answer token (a target to count)")
    return true_label_probability(model, examples)


def _true_and_perturbed(model: nn.Module, facts: FactSet, indices) -> tuple[np.ndarray, ...]:
    """:math:`\bar P` of each fact's true answer ``[m]`` and of its perturbed ones ``[m, k]``."""
    indices = integer_positions(indices, "facts").reshape(-1)
    if len(indices) == 0:
        raise ValueError("truth ratios need at least one fact")
    true = answer_probabilities(model, facts.facts.subset(indices))
    wrong = answer_probabilities(model, facts.perturbed_of(indices))
    return true, wrong.reshape(len(indices), facts.alternatives)


def truth_ratios(model: nn.Module, facts: FactSet, indices) -> np.ndarray:
    """Truth ratio :math:`R` ``[len(indices)]`` of each fact at ``indices`` (module docstring)."""
    true, wrong = _true_and_perturbed(model, facts, indices)
    return wrong.mean(axis=1) / true


def forget_quality(unlearned: np.ndarray, retained: np.ndarray) -> float:
    """p-value of the two-sample KS test between two sets of truth ratios (1: alike).

    Raises:
        ValueError: ratios that are not 1-D (one per fact), an empty set or NaN ratios.
    """
    unlearned, retained = np.asarray(unlearned, np.float64), np.asarray(retained, np.float64)
    if unlearned.ndim != 1 or retained.ndim != 1:
        raise ValueError(
            f"truth ratios must be 1-D, one per fact; got shapes {unlearned.shape} and "
            f"{retained.shape}"
        )
    if len(unlearned) == 0 or len(retained) == 0:
        raise ValueError("forget quality needs truth ratios from both models")
    if np.isnan(unlearned).any() or np.isnan(retained).any():
        raise ValueError("truth ratios contain NaN")
    return float(stats.ks_2samp(unlearned, retained).pvalue)


def model_utility(model: nn.Module, facts: FactSet, indices) -> float:
    r"""Harmonic mean of the mean :math:`\bar P(a \mid q)` and mean :math:`\max(0, 1 - R)`."""
    true, wrong = _true_and_perturbed(model, facts, indices)
    probability = float(true.mean())
    truth = float(np.maximum(0.0, 1.0 - wrong.mean(axis=1) / true).mean())
    return float(stats.hmean([probability, truth])) if min(probability, truth) > 0 else 0.0
