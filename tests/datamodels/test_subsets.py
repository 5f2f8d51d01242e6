import numpy as np
import pytest

from tda.datamodels import sample_subsets


@pytest.mark.parametrize(("n_train", "alpha", "size"), [(10, 0.5, 5), (101, 0.3, 30), (7, 0.9, 6)])
def test_every_subset_has_exactly_the_rounded_size(n_train, alpha, size):
    masks = sample_subsets(n_train, alpha, count=50, seed=0)
    assert masks.shape == (50, n_train)
    assert masks.dtype == bool
    np.testing.assert_array_equal(masks.sum(axis=1), np.full(50, size))


def test_same_seed_same_masks_and_other_seed_other_masks():
    first = sample_subsets(40, 0.5, count=20, seed=3)
    np.testing.assert_array_equal(first, sample_subsets(40, 0.5, count=20, seed=3))
    assert not np.array_equal(first, sample_subsets(40, 0.5, count=20, seed=4))


def test_rows_differ_and_cover_examples_uniformly():
    masks = sample_subsets(20, 0.5, count=2000, seed=0)
    assert len({row.tobytes() for row in masks}) > 1900  # C(20, 10) = 184756 possible subsets
    # each example is in a subset with probability 1/2: 2000 draws, standard deviation ~22
    np.testing.assert_allclose(masks.sum(axis=0), 1000, atol=100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 1}, "n_train"),
        ({"n_train": 10.0}, "n_train"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": -0.2}, "alpha"),
        ({"count": 0}, "count"),
        ({"n_train": 4, "alpha": 0.1}, "rounds to subsets of 0"),
        ({"n_train": 4, "alpha": 0.95}, "rounds to subsets of 4"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    arguments = {"n_train": 10, "alpha": 0.5, "count": 3, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        sample_subsets(**arguments)
