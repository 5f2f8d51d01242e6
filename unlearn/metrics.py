r"""Unlearning metrics (all in percent): UA, RA, TA, MIA-efficacy, and the average gap to an oracle.

With forget set :math:`F`, retain set :math:`R` and test set :math:`T`:

- UA (unlearning accuracy) :math:`= 100 - \mathrm{acc}(F)`;
- RA (retain accuracy) :math:`= \mathrm{acc}(R)`; TA (test accuracy) :math:`= \mathrm{acc}(T)`;
- MIA-efficacy: a confidence-based membership-inference attack, an SVC on the true-label
  probability :math:`p_y(x)`, trained on retain examples (members) against test examples
  (non-members); the metric is the percentage of :math:`F` the attack calls non-members;
- average gap :math:`= \frac{1}{|K|}\sum_{k\in K} |m_k - m^{\text{oracle}}_k|` over
  :math:`K = \{UA, RA, TA, MIA\}`, where the oracle is a model retrained on :math:`R`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.svm import SVC
from torch import nn

from tda.data.examples import Examples
from tda.outputs import logits_of
from tda.task import IGNORE_INDEX, LanguageModelingTask

GAP_METRICS = ("UA", "RA", "TA", "MIA")


def accuracy_percent(model: nn.Module, examples: Examples) -> float:
    """Percentage of ``examples`` whose arg-max logit is the target.

    With sequence targets (``[n, T]``, a language model's) an example is correct when the arg-max
    is the target at every counted position (exact match under teacher forcing; positions whose
    target is :data:`~tda.task.IGNORE_INDEX` are skipped).
    """
    if len(examples) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    logits = logits_of(model, examples)
    targets = examples.targets.to(logits.device)
    correct = (logits.argmax(dim=-1) == targets) | (targets == IGNORE_INDEX)
    return 100.0 * int(correct.reshape(len(examples), -1).all(dim=1).sum()) / len(examples)


def true_label_probability(model: nn.Module, examples: Examples) -> np.ndarray:
    r""":math:`p_y(x) = \mathrm{softmax}(f(x))_y` for every example, ``[n]`` float64.

    With sequence targets, the geometric mean of :math:`p_{y_t}` over the counted positions
    (1 where none is counted).
    """
    logits = logits_of(model, examples).double()
    targets = examples.targets.to(logits.device)
    if targets.dim() == 1:
        chosen = torch.softmax(logits, dim=-1).gather(1, targets.view(-1, 1))
        return chosen.squeeze(1).cpu().numpy()
    counted = (targets != IGNORE_INDEX).reshape(len(examples), -1).sum(1).clamp_min(1)
    log_likelihood = LanguageModelingTask().output(logits, targets)
    return torch.exp(log_likelihood / counted).cpu().numpy()


def mia_efficacy(
    model: nn.Module,
    forget: Examples,
    retain: Examples,
    test: Examples,
    *,
    seed: int = 0,
    svc_c: float = 3.0,
) -> float:
    r"""Percentage of the forget set that a confidence-based attack calls non-members.

    The attack is an RBF SVC (``C = svc_c``, ``gamma="auto"``) on the single feature
    :math:`p_y(x)`, trained on members (retain) against non-members (test). The larger group is
    subsampled without replacement (seeded) to the size of the smaller one so both classes weigh
    equally; the same seeded generator seeds the SVC, so numpy's global random state is left
    alone. Higher means the forget set looks more like unseen data.

    Raises:
        ValueError: an empty forget, retain or test set.
    """
    for name, data in (("forget", forget), ("retain", retain), ("test", test)):
        if len(data) == 0:
            raise ValueError(f"MIA-efficacy needs a non-empty {name} set")
    members, non_members = (
        true_label_probability(model, retain),
        true_label_probability(model, test),
    )
    count = min(len(members), len(non_members))
    generator = np.random.default_rng(seed)
    members = members[_subsample(len(members), count, generator)]
    non_members = non_members[_subsample(len(non_members), count, generator)]
    features = np.concatenate([members, non_members]).reshape(-1, 1)
    labels = np.concatenate([np.ones(count), np.zeros(count)])
    svc_seed = int(generator.integers(2**32))  # SVC takes seeds below 2**32 only
    attack = SVC(C=svc_c, gamma="auto", kernel="rbf", random_state=svc_seed)
    attack = attack.fit(features, labels)
    predicted = attack.predict(true_label_probability(model, forget).reshape(-1, 1))
    return 100.0 * float(np.mean(predicted == 0))


def _subsample(size: int, count: int, generator: np.random.Generator) -> np.ndarray:
    if count >= size:
        return np.arange(size)
    return np.sort(generator.choice(size, size=count, replace=False))


def unlearning_metrics(
    model: nn.Module,
    forget: Examples,
    retain: Examples,
    test: Examples | None = None,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """UA, RA and, given test data, TA and MIA (percent). UA and MIA are omitted if F is empty."""
    metrics = {"RA": accuracy_percent(model, retain)}
    if len(forget):
        metrics["UA"] = 100.0 - accuracy_percent(model, forget)
    if test is not None:
        metrics["TA"] = accuracy_percent(model, test)
        if len(forget):
            metrics["MIA"] = mia_efficacy(model, forget, retain, test, seed=seed)
    return {key: metrics[key] for key in ("UA", "RA", "TA", "MIA") if key in metrics}


def average_gap(
    metrics: Mapping[str, float],
    oracle_metrics: Mapping[str, float],
    keys: Sequence[str] = GAP_METRICS,
) -> float:
    r"""Mean absolute difference to the oracle, :math:`\frac{1}{|K|}\sum_k |m_k - m^{o}_k|`.

    Raises:
        ValueError: a key missing from either dictionary, or no keys.
    """
    if not keys:
        raise ValueError("average_gap needs at least one metric name")
    for name, values in (("metrics", metrics), ("oracle metrics", oracle_metrics)):
        missing = [key for key in keys if key not in values]
        if missing:
            raise ValueError(f"{name} lack {missing}; the gap is taken over {list(keys)}")
    return float(np.mean([abs(metrics[key] - oracle_metrics[key]) for key in keys]))
