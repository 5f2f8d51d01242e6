"""SubsetRetrainer: trains on exactly the masked examples and measures the query outputs."""

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.datamodels import SubsetRetrainer, sample_subsets
from tda.models import LogisticRegression, build_model
from tda.outputs import task_outputs
from tda.task import ClassificationTask
from tda.training import TrainConfig, train_on


def retrainer(aligned_batches=False):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(20, 3, generator=generator)
    data = Examples(inputs, (inputs[:, 0] > 0).long())
    return SubsetRetrainer(
        lambda: LogisticRegression(3, 2),
        data,
        data.subset(range(4)),
        TrainConfig(epochs=3, batch_size=5),
        aligned_batches=aligned_batches,
    )


@pytest.mark.parametrize("aligned_batches", [False, True])
@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_zero_one_masks_train_on_the_same_examples_as_boolean_masks(aligned_batches, dtype):
    # a 0/1 integer mask must not be read as the positions 0 and 1
    retrain, mask = retrainer(aligned_batches), sample_subsets(20, 0.5, 1, seed=0)[0]
    np.testing.assert_array_equal(retrain(mask.astype(dtype), 0), retrain(mask, 0))


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.ones(19, dtype=bool), r"shape \(20,\), one entry per training example"),
        (np.ones((20, 1), dtype=bool), r"shape \(20,\), one entry per training example"),
        (np.full(20, 2), "boolean or hold only 0 and 1"),
    ],
)
def test_malformed_masks_are_refused(mask, message):
    with pytest.raises(ValueError, match=message):
        retrainer()(mask, 0)


@pytest.mark.parametrize("aligned_batches", [False, True])
def test_float64_data_trains_a_float64_model_as_direct_training_does(aligned_batches):
    # the model was built in float32 whatever the data: its first forward pass failed
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    data = Examples(inputs, (inputs[:, 0] > 0).long())
    config = TrainConfig(epochs=2, batch_size=5)
    retrain = SubsetRetrainer(
        lambda: LogisticRegression(3, 2),
        data,
        data.subset(range(4)),
        config,
        aligned_batches=aligned_batches,
    )
    mask = sample_subsets(20, 0.5, 1, seed=0)[0]
    model = build_model(lambda: LogisticRegression(3, 2), 1, dtype=torch.float64)
    train_on(model, data, mask, config, 1, ClassificationTask(), aligned_batches)
    expected = task_outputs(model, ClassificationTask(), data.subset(range(4))).numpy()
    np.testing.assert_array_equal(retrain(mask, 1), expected)
