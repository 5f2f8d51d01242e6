"""SparseProjector: structure of the sparse JL matrix, CSR application, validation."""

import math

import pytest
import torch

from tda.projection import SparseProjector


def _features(batch: int, p: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, p, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize(("dim", "nonzeros"), [(16, 1), (16, 4), (8, 8)])
def test_each_row_has_distinct_columns_and_unit_norm(dim, nonzeros):
    # 5000 rows span two structure blocks.
    projector = SparseProjector(dim=dim, nonzeros=nonzeros, seed=3)
    columns, signs = projector.structure(5000)
    assert columns.shape == signs.shape == (5000, nonzeros)
    assert int(columns.min()) >= 0 and int(columns.max()) < dim
    assert torch.equal(
        columns.sort(dim=1).values.diff(dim=1) > 0, torch.ones(5000, nonzeros - 1).bool()
    )
    assert set(signs.unique().tolist()) == {-1, 1}
    matrix = projector.matrix(5000)
    assert torch.equal((matrix != 0).sum(dim=1), torch.full((5000,), nonzeros))
    torch.testing.assert_close(matrix.square().sum(dim=1), torch.ones(5000, dtype=torch.float64))


def test_columns_and_signs_are_uniform():
    # 20000 rows x 3 draws over 16 columns: each count is ~ Binomial(20000, 3/16),
    # mean 3750, std ~55; allow 6 std. Signs: mean of 60000 +-1 values, std ~0.004.
    columns, signs = SparseProjector(dim=16, nonzeros=3, seed=0).structure(20000)
    counts = torch.bincount(columns.reshape(-1), minlength=16).double()
    assert (counts - 3750).abs().max() < 6 * math.sqrt(20000 * 3 / 16 * (1 - 3 / 16))
    assert abs(signs.double().mean().item()) < 6 / math.sqrt(60000)


@pytest.mark.parametrize("nonzeros", [1, 3])
def test_projection_is_features_times_materialised_matrix(nonzeros):
    projector = SparseProjector(dim=24, nonzeros=nonzeros, seed=5)
    x = _features(6, 4200)
    expected = x @ projector.matrix(4200)
    torch.testing.assert_close(projector.project(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(projector.project(x.float()), expected.float(), rtol=1e-5, atol=1e-5)


def test_chunked_batches_equal_one_batch():
    projector = SparseProjector(dim=64, nonzeros=4, seed=1)
    x = _features(23, 300)
    whole = projector.project(x)
    assert whole.is_contiguous()
    chunks = torch.cat([projector.project(x[start : start + 5]) for start in range(0, 23, 5)])
    single_rows = torch.cat([projector.project(x[i : i + 1]) for i in range(23)])
    torch.testing.assert_close(chunks, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(single_rows, whole, rtol=1e-12, atol=1e-12)


def test_index_structure_is_built_once_per_width_device_dtype(monkeypatch):
    projector = SparseProjector(dim=16, seed=0)
    x = _features(3, 40)
    first = projector.project(x)
    projector.project(x.float())
    assert set(projector._cache) == {(40, "cpu", torch.float64), (40, "cpu", torch.float32)}

    def fail(*args, **kwargs):
        raise AssertionError("the index structure was rebuilt")

    monkeypatch.setattr(SparseProjector, "_build_transpose", fail)
    assert torch.equal(projector.project(x), first)


def test_different_seeds_give_different_structures():
    columns, signs = SparseProjector(dim=16, seed=0).structure(100)
    other_columns, other_signs = SparseProjector(dim=16, seed=1).structure(100)
    assert not torch.equal(columns, other_columns)
    assert not torch.equal(signs, other_signs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim must be an integer >= 1"),
        ({"dim": 8, "nonzeros": 0}, "nonzeros must be an integer >= 1"),
        ({"dim": 8, "nonzeros": 9}, "nonzeros = 9 exceeds dim = 8"),
        ({"dim": 8, "seed": 1.0}, "seed must be an int"),
        ({"dim": 8, "input_dim": -1}, "input_dim must be an integer >= 1"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseProjector(**kwargs)
