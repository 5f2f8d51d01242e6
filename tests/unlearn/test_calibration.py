"""Calibration of a predictor's scales: exact on a constructed problem, zero when hopeless."""

import numpy as np
import pytest
import torch
from torch import nn

from tda.data import Examples
from unlearn import ForgetSplit, UnlearningRequest
from unlearn.predictors import (
    Calibration,
    PredictorScope,
    ScoresPredictor,
    architecture,
    calibrate,
    calibrate_pooled,
)

N, C = 12, 3
FORGET = np.array([2, 5, 9])


def _lookup_model(logits: torch.Tensor) -> nn.Module:
    """A model whose logits on one-hot input ``i`` are ``logits[i]`` exactly."""
    model = nn.Linear(N, C, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(logits.T)
    return model


def _problem(forget_factor: float, retain_factor: float, forget: np.ndarray = FORGET):
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(C, N, N, generator=generator, dtype=torch.float64)
    predictor = ScoresPredictor(PredictorScope(N), "logits", scores=scores)
    effect = predictor.forget_effect(forget)
    factors = torch.full((N, 1), retain_factor, dtype=torch.float64)
    factors[forget] = forget_factor
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


def test_calibration_compares_the_mean_outputs_of_several_originals_and_oracles():
    """Two originals spread symmetrically about the original and two oracles about the oracle
    have the same mean outputs, so they give the scales of the single pair (7 and 2)."""
    predictor, train, (original, oracle) = _problem(forget_factor=7.0, retain_factor=2.0)
    generator = torch.Generator().manual_seed(1)

    def spread(model):
        logits = model.weight.detach().T
        noise = torch.randn(logits.shape, generator=generator, dtype=torch.float64)
        return [_lookup_model(logits + noise), _lookup_model(logits - noise)]

    calibration = calibrate(predictor, spread(original), spread(oracle), train, FORGET)
    assert calibration.scale == pytest.approx(2.0, rel=1e-12)
    assert calibration.forget_scale == pytest.approx(7.0, rel=1e-12)
    assert (calibration.originals, calibration.oracles) == (2, 2)


def test_effects_pointing_the_wrong_way_get_scale_zero():
    """Non-negative least squares: keep the original's outputs rather than push them away."""
    predictor, train, (original, oracle) = _problem(forget_factor=-1.0, retain_factor=2.0)
    calibration = calibrate(predictor, [original], [oracle], train, FORGET)
    assert calibration.forget_scale == 0.0
    assert calibration.scale == pytest.approx(2.0, rel=1e-12)


def test_pooled_calibration_fits_one_least_squares_over_every_forget_set():
    """Two proxies whose true forget scales differ (7 and 3): the pooled scale is the least-squares
    fit over both sets' points together, not the mean of the two."""
    other = np.array([0, 7, 11])
    predictor, train, (original, first) = _problem(forget_factor=7.0, retain_factor=2.0)
    _, _, (_, second) = _problem(forget_factor=3.0, retain_factor=2.0, forget=other)
    pooled = calibrate_pooled(predictor, [original], [([first], FORGET), ([second], other)], train)
    weights = [float(predictor.forget_effect(f)[f].pow(2).sum()) for f in (FORGET, other)]
    expected = (7.0 * weights[0] + 3.0 * weights[1]) / sum(weights)
    assert pooled.forget_scale == pytest.approx(expected, rel=1e-12)
    assert pooled.scale == pytest.approx(2.0, rel=1e-12)
    assert (pooled.proxies, pooled.forget_size) == (2, 6)
    single = calibrate_pooled(predictor, [original], [([first], FORGET)], train)
    assert single == calibrate(predictor, [original], [first], train, FORGET)
    with pytest.raises(ValueError, match="at least one forget set"):
        calibrate_pooled(predictor, [original], [], train)


def test_calibration_refuses_another_training_set_or_architecture():
    """Calibrating on other data than the predictor scores failed in a tensor mask (a larger
    set) or fit scales silently (the same size), and models of another architecture passed."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(C, N, N, generator=generator, dtype=torch.float64)
    train = Examples(torch.eye(N, dtype=torch.float64), torch.zeros(N, dtype=torch.long))
    original = oracle = _lookup_model(torch.randn(N, C, generator=generator, dtype=torch.float64))
    scope = PredictorScope(N, train.fingerprint(), architecture(original))
    predictor = ScoresPredictor(scope, "logits", scores=scores)
    calibrate(predictor, [original], [oracle], train, FORGET)  # the data it was built for
    other = Examples(2 * train.inputs, train.targets)
    with pytest.raises(ValueError, match="built on training set"):
        calibrate(predictor, [original], [oracle], other, FORGET)
    larger = Examples(torch.eye(N + 2, dtype=torch.float64), torch.zeros(N + 2, dtype=torch.long))
    with pytest.raises(ValueError, match=f"scores {N} training examples .* has {N + 2}"):
        calibrate(predictor, [original], [oracle], larger, FORGET)
    wider = nn.Linear(N, C + 1, bias=False).double()
    with pytest.raises(ValueError, match="architecture"):
        calibrate(predictor, [original], [wider], train, FORGET)


def test_calibration_refuses_forget_indices_outside_the_training_set():
    """A negative proxy index was read from the end (-1 as the last point) and fit silently."""
    predictor, train, (original, oracle) = _problem(forget_factor=7.0, retain_factor=2.0)
    for bad in (np.array([-1, 3]), np.array([3, N])):
        with pytest.raises(ValueError, match="out of range"):
            calibrate(predictor, [original], [oracle], train, bad)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_calibration_with_an_infinite_or_nan_scale_is_refused_by_value(value):
    """Calibration.apply copied any scale into the predictor: inf shifted every target to inf."""
    with pytest.raises(ValueError, match=f"^scale must be non-negative and finite, got {value}"):
        Calibration(value, 1.0, forget_size=3, originals=1, oracles=1)
    with pytest.raises(
        ValueError, match=f"forget_scale must be non-negative and finite, got {value}"
    ):
        Calibration(1.0, value, forget_size=3, originals=1, oracles=1)
