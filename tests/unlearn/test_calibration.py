"""Calibration of a predictor's scales: exact on a constructed problem, zero when hopeless."""

import numpy as np
import pytest
import torch
from torch import nn

from tda.data import Examples
from unlearn import ForgetSplit, UnlearningRequest
from unlearn.predictors import PredictorScope, ScoresPredictor, calibrate

N, C = 12, 3
FORGET = np.array([2, 5, 9])


def _lookup_model(logits: torch.Tensor) -> nn.Module:
    """A model whose logits on one-hot input ``i`` are ``logits[i]`` exactly."""
    model = nn.Linear(N, C, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(logits.T)
    return model


def _problem(forget_factor: float, retain_factor: float):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(C, N, N, generator=generator, dtype=torch.float64)
    predictor = ScoresPredictor(PredictorScope(N), "logits", scores=scores)
    effect = predictor.forget_effect(FORGET)
    factors = torch.full((N, 1), retain_factor, dtype=torch.float64)
    factors[FORGET] = forget_factor
    original = torch.randn(N, C, generator=generator, dtype=torch.float64)
    train = Examples(torch.eye(N, dtype=torch.float64), torch.zeros(N, dtype=torch.long))
    models = _lookup_model(original), _lookup_model(original - factors * effect)
    return predictor, train, models


def test_calibration_recovers_the_forget_and_retain_scales_exactly():
    predictor, train, (original, oracle) = _problem(forget_factor=7.0, retain_factor=2.0)
    calibration = calibrate(predictor, [original], [oracle], train, FORGET)
    assert calibration.scale == pytest.approx(2.0, rel=1e-12)
    assert calibration.forget_scale == pytest.approx(7.0, rel=1e-12)
    calibration.apply(predictor)
    split = ForgetSplit.of(train, UnlearningRequest(FORGET, train_size=N))
    positions = np.arange(N)
    targets = predictor.targets(original, train, positions, split, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(targets, oracle(train.inputs))


def test_effects_pointing_the_wrong_way_get_scale_zero():
    """Non-negative least squares: keep the original's outputs rather than push them away."""
    predictor, train, (original, oracle) = _problem(forget_factor=-1.0, retain_factor=2.0)
    calibration = calibrate(predictor, [original], [oracle], train, FORGET)
    assert calibration.forget_scale == 0.0
    assert calibration.scale == pytest.approx(2.0, rel=1e-12)
