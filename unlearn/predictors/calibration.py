r"""Calibrating a predictor's scales on a proxy forget set (honestly: never on :math:`F`).

Attribution effects are often right in direction but not in size, and differently wrong on the
forget points themselves (self-effects, underestimated by linearised models) and on the other
points. :func:`calibrate` fits both factors by least squares,

.. math:: s_G = \max\Big(0, \frac{\sum_{x\in G} \langle a(x), e(x)\rangle}{\sum_{x\in G}
   \|e(x)\|^2}\Big),
   \qquad a(x) = \overline{f(x;\theta_o)} - \overline{f(x;\theta_{\text{oracle}})},

for :math:`G` the forget points and the other training points, with :math:`e` the predictor's
unscaled effect and :math:`a` the mean change from originals to oracles (non-negative least
squares: effects pointing the wrong way get scale 0, keeping the original's outputs there).
:func:`calibrate_on_proxy`
does it on the tuning protocol's proxy forget set :math:`F' \subset R` and its oracles (retrained
on :math:`S\setminus F'`, which still contains :math:`F`), so the real forget set is never used;
with several proxies (``proxies=K``, as the tuning's) their points are pooled into one fit
(:func:`calibrate_pooled`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from tda.data.examples import Examples
from tda.training import TrainConfig
from unlearn.ensembles import load_or_train_oracles
from unlearn.forget_sets import ForgetSet
from unlearn.methods.base import ForgetSplit
from unlearn.predictors.base import ShiftPredictor, check_scale, model_outputs
from unlearn.request import UnlearningRequest


@dataclass(frozen=True)
class Calibration:
    """Least-squares scales and the data they were fit on.

    Attributes:
        scale, forget_scale: the fitted scales of the other points' and the forget points' effects.
        forget_size: forget points the fit saw, over every proxy.
        originals: originals whose mean outputs were compared.
        oracles: oracles per proxy.
        proxies: forget sets whose points were pooled into one fit.
    """

    scale: float
    forget_scale: float
    forget_size: int
    originals: int
    oracles: int
    proxies: int = 1

    def __post_init__(self) -> None:
        check_scale("scale", self.scale)
        check_scale("forget_scale", self.forget_scale)

    def apply(self, predictor: ShiftPredictor) -> ShiftPredictor:
        """Set ``predictor``'s scales (in place) and return it; its cached effects stay valid
        (they are unscaled)."""
        predictor.scale, predictor.forget_scale = self.scale, self.forget_scale
        return predictor

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _mean_outputs(models: Sequence[nn.Module], train: Examples, output: str) -> Tensor:
    return torch.stack([model_outputs(m, train, output).double() for m in models]).mean(dim=0)


def _sums(actual: Tensor, effect: Tensor) -> np.ndarray:
    r""":math:`(\sum \langle a, e\rangle, \sum \|e\|^2)`, the two sums of a least-squares scale."""
    return np.array([float((actual * effect).sum()), float((effect * effect).sum())])


def _scale(sums: np.ndarray) -> float:
    numerator, denominator = sums
    return max(numerator / denominator, 0.0) if denominator > 0 else 0.0


def calibrate(
    predictor: ShiftPredictor,
    originals: Sequence[nn.Module],
    oracles: Sequence[nn.Module],
    train: Examples,
    forget_indices: np.ndarray,
) -> Calibration:
    """Scales that best map the predictor's effect of ``forget_indices`` to the oracles' change."""
    return calibrate_pooled(predictor, originals, [(oracles, forget_indices)], train)


def calibrate_pooled(
    predictor: ShiftPredictor,
    originals: Sequence[nn.Module],
    forget_sets: Sequence[tuple[Sequence[nn.Module], np.ndarray]],
    train: Examples,
) -> Calibration:
    r"""One pair of scales fit on several forget sets at once: the least-squares sums
    :math:`\sum\langle a, e\rangle` and :math:`\sum\|e\|^2` of every ``(oracles, forget_indices)``
    pair are added before dividing, so each set weighs by how much effect it carries.

    Raises:
        ValueError: no forget sets, or one without originals or oracles; ``train`` is not the
            training set the predictor scores, or the models are not of its architecture
            (:meth:`ShiftPredictor.check`); forget indices outside ``train``.
    """
    if not forget_sets:
        raise ValueError("calibration needs at least one forget set and its oracles")
    if not originals or not all(oracles for oracles, _ in forget_sets):
        raise ValueError("calibration needs at least one original and one oracle")
    _check_fits(predictor, originals, forget_sets, train)
    output = predictor.output
    before = _mean_outputs(originals, train, output)
    forget_sums, other_sums, forget_size = np.zeros(2), np.zeros(2), 0
    for oracles, forget_indices in forget_sets:
        actual = before - _mean_outputs(oracles, train, output)
        effect = predictor.forget_effect(forget_indices).double()
        is_forget = torch.zeros(len(train), dtype=torch.bool)
        is_forget[torch.as_tensor(forget_indices)] = True
        forget_sums += _sums(actual[is_forget], effect[is_forget])
        other_sums += _sums(actual[~is_forget], effect[~is_forget])
        forget_size += int(is_forget.sum())
    return Calibration(
        scale=_scale(other_sums),
        forget_scale=_scale(forget_sums),
        forget_size=forget_size,
        originals=len(originals),
        oracles=len(forget_sets[0][0]),
        proxies=len(forget_sets),
    )


def _check_fits(predictor, originals, forget_sets, train: Examples) -> None:
    """Refuse data the predictor was not built on and models of another architecture."""
    fingerprint = train.fingerprint()
    for oracles, forget_indices in forget_sets:
        request = UnlearningRequest(forget_indices, train_size=len(train))
        split = ForgetSplit.of(train, request, train_fingerprint=fingerprint)
        for model in (*originals, *oracles):
            predictor.check(model, split)


def calibrate_on_proxy(
    predictor: ShiftPredictor,
    forget_set: ForgetSet,
    originals: Sequence[nn.Module],
    train: Examples,
    *,
    model_factory: Callable[[], nn.Module],
    config: TrainConfig,
    oracle_seeds: Sequence[int],
    oracle_root: str | os.PathLike,
    proxies: int = 1,
) -> Calibration:
    """:func:`calibrate` on ``forget_set``'s proxy and its oracles (trained or loaded); with
    ``proxies`` > 1, :func:`calibrate_pooled` on that many proxies (:meth:`ForgetSet.proxies`)."""
    pairs = []
    for proxy in forget_set.proxies(train, proxies):
        indices = proxy.indices(train)
        oracles = load_or_train_oracles(
            model_factory, train, indices, config, oracle_seeds, oracle_root
        )
        pairs.append((oracles.models, indices))
    return calibrate_pooled(predictor, originals, pairs, train)
