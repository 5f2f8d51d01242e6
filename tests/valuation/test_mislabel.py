"""Mislabel detection: recall at a fraction inspected and AUC on planted cases."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tda.data import Examples
from tda.models import LogisticRegression, build_model
from tda.training import TrainConfig, train
from tda.valuation import flip_labels, loss_gradient_norms, mislabel_detection


def blobs(n=120, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % classes
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    inputs = centres[targets] + torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return Examples(inputs, targets)


def test_flip_labels_changes_exactly_the_chosen_labels():
    data = blobs()
    flipped_data, flipped = flip_labels(data, 0.1, 3, seed=4)
    assert int(flipped.sum()) == 12
    assert bool((flipped_data.targets[flipped] != data.targets[flipped]).all())
    assert bool((flipped_data.targets[~flipped] == data.targets[~flipped]).all())
    again, mask = flip_labels(data, 0.1, 3, seed=4)
    assert torch.equal(again.targets, flipped_data.targets) and torch.equal(mask, flipped)
    assert not torch.equal(flip_labels(data, 0.1, 3, seed=5)[1], flipped)
    with pytest.raises(ValueError, match="fraction"):
        flip_labels(data, 1.5, 3)


def test_flip_labels_refuses_targets_outside_the_classes_and_sequence_targets():
    inputs = torch.randn(6, 2)
    with pytest.raises(ValueError, match="target 3 of example 3 is outside the 3 classes"):
        flip_labels(Examples(inputs, torch.arange(6)), 0.5, 3)  # (3 + u) mod 3 read as a class
    with pytest.raises(ValueError, match="target -100 of example 0"):
        flip_labels(Examples(inputs, torch.full((6,), -100)), 0.5, 3)
    with pytest.raises(ValueError, match=r"shape \[n\]; got targets of shape \(6, 6\)"):
        flip_labels(Examples(inputs, torch.zeros(6, 6, dtype=torch.long)), 1.0, 3)


def test_recall_and_auc_on_a_hand_ranking():
    flipped = np.zeros(10, dtype=bool)
    flipped[[0, 1]] = True
    suspicion = np.array([9.0, 5.0, 8.0, 7.0, 6.0, 4.0, 3.0, 2.0, 1.0, 0.0])  # ranks 1 and 5
    report = mislabel_detection(suspicion, flipped, fractions=(0.1, 0.2, 0.5))
    assert report.found_at == {0.1: 0.5, 0.2: 0.5, 0.5: 1.0}
    assert report.auc == pytest.approx(roc_auc_score(flipped, suspicion))
    assert report.auc == pytest.approx((8 + 5) / 16)
    assert mislabel_detection(-suspicion, flipped).auc == pytest.approx(1 - report.auc)
    assert mislabel_detection(np.ones(10), flipped).auc == pytest.approx(0.5)


def test_recall_inspects_exactly_ceil_of_fraction_times_n_despite_float_rounding():
    # 0.07 * 100 == 7.000000000000001 in floating point: the 8th example must not be counted
    flipped = np.zeros(100, dtype=bool)
    flipped[[0, 7]] = True  # the 1st and the 8th most suspicious
    suspicion = -np.arange(100.0)
    report = mislabel_detection(suspicion, flipped, fractions=(0.07, 0.08, 0.075))
    assert report.found_at == {0.07: 0.5, 0.08: 1.0, 0.075: 1.0}


def test_a_tiny_fraction_inspects_one_example_not_all_of_them():
    flipped = np.zeros(100, dtype=bool)
    flipped[[0, 99]] = True  # the most and the least suspicious
    suspicion = -np.arange(100.0)
    report = mislabel_detection(suspicion, flipped, fractions=(1e-12, 0.001))
    assert report.found_at == {1e-12: 0.5, 0.001: 0.5}  # ceil(f n) = 1 example, not curve[-1]


def test_perfect_ranking_finds_everything():
    flipped = torch.zeros(50, dtype=torch.bool)
    flipped[torch.tensor([3, 17, 22, 40, 41])] = True
    report = mislabel_detection(flipped.double() + 0.01 * torch.arange(50), flipped)
    assert report.found_at == {0.1: 1.0, 0.2: 1.0} and report.auc == 1.0
    assert "100.0%" in str(report)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="both flipped and clean"):
        mislabel_detection(np.arange(4.0), np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        mislabel_detection(np.array([np.nan, 1.0]), np.array([True, False]))
    with pytest.raises(ValueError, match="outside"):
        mislabel_detection(np.arange(4.0), np.array([True, False, False, False]), fractions=(0,))
    with pytest.raises(ValueError, match="only 0 and 1"):
        mislabel_detection(np.arange(4.0), np.array([0, 2, 0, 1]))  # read as a mask: [F, T, F, T]
    with pytest.raises(ValueError, match="only 0 and 1"):
        mislabel_detection(np.arange(3.0), np.array([np.nan, 1.0, 0.0]))
    report = mislabel_detection(np.arange(4.0), torch.tensor([0, 0, 1, 1]))  # a 0/1 mask reads
    assert report.auc == 1.0 and report.n_flipped == 2


def test_loss_gradient_norms_find_planted_wrong_labels():
    data, flipped = flip_labels(blobs(), 0.1, 3, seed=0)
    model = build_model(lambda: LogisticRegression(2, 3), seed=0, dtype=torch.float64)
    train(model, data, TrainConfig(epochs=30, batch_size=20), seed=0)
    report = mislabel_detection(loss_gradient_norms(model, data), flipped)
    assert report.found_at[0.1] >= 0.75 and report.found_at[0.2] >= 0.9, report
    assert report.auc > 0.95, report
