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
on :math:`S\setminus F'`, which still contains :math:`F`), so the real forget set is never used.
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
from unlearn.predictors.base import ShiftPredictor, model_outputs


@dataclass(frozen=True)
class Calibration:
    """Least-squares scales and the data they were fit on."""

    scale: float
    forget_scale: float
    forget_size: int
    originals: int
    oracles: int

    def apply(self, predictor: ShiftPredictor) -> ShiftPredictor:
        """Set ``predictor``'s scales (in place) and return it."""
        predictor.scale, predictor.forget_scale = self.scale, self.forget_scale
        return predictor

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _mean_outputs(models: Sequence[nn.Module], train: Examples, output: str) -> Tensor:
    return torch.stack([model_outputs(m, train, output).double() for m in models]).mean(dim=0)


def _least_squares(actual: Tensor, effect: Tensor) -> float:
    denominator = float((effect * effect).sum())
    scale = float((actual * effect).sum()) / denominator if denominator > 0 else 0.0
    return max(scale, 0.0)


def calibrate(
    predictor: ShiftPredictor,
    originals: Sequence[nn.Module],
    oracles: Sequence[nn.Module],
    train: Examples,
    forget_indices: np.ndarray,
) -> Calibration:
    """Scales that best map the predictor's effect of ``forget_indices`` to the oracles' change."""
    if not originals or not oracles:
        raise ValueError("calibration needs at least one original and one oracle")
    output = predictor.output
    actual = _mean_outputs(originals, train, output) - _mean_outputs(oracles, train, output)
    effect = predictor.forget_effect(forget_indices).double()
    is_forget = torch.zeros(len(train), dtype=torch.bool)
    is_forget[torch.as_tensor(forget_indices)] = True
    return Calibration(
        scale=_least_squares(actual[~is_forget], effect[~is_forget]),
        forget_scale=_least_squares(actual[is_forget], effect[is_forget]),
        forget_size=int(is_forget.sum()),
        originals=len(originals),
        oracles=len(oracles),
    )


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
) -> Calibration:
    """:func:`calibrate` on ``forget_set``'s proxy and its oracles (trained or loaded)."""
    proxy = forget_set.proxy(train).indices(train)
    oracles = load_or_train_oracles(model_factory, train, proxy, config, oracle_seeds, oracle_root)
    return calibrate(predictor, originals, oracles.models, train, proxy)
