"""DenseProjector: block-defined seeded matrix, cached and streamed paths, validation."""

import math

import pytest
import torch

from tda.projection import DenseProjector

KINDS = ["rademacher", "gaussian"]


def _features(batch: int, p: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, p, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_projection_is_features_times_materialised_matrix(kind):
    projector = DenseProjector(dim=24, kind=kind, seed=5, block_rows=8)
    x = _features(4, 30)
    matrix = projector.matrix(30)
    assert matrix.shape == (30, 24)
    torch.testing.assert_close(projector.project(x), x @ matrix, rtol=1e-12, atol=1e-12)
    if kind == "rademacher":
        assert torch.equal(matrix.abs(), torch.full_like(matrix, 1 / math.sqrt(24)))


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_equals_cached(kind):
    # 50 rows in blocks of 16: three full blocks and a partial one.
    cached = DenseProjector(dim=32, kind=kind, seed=2, block_rows=16)
    streamed = DenseProjector(dim=32, kind=kind, seed=2, block_rows=16, max_cache_bytes=0)
    for dtype, tolerance in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        x = _features(7, 50).to(dtype)
        torch.testing.assert_close(
            streamed.project(x), cached.project(x), rtol=tolerance, atol=tolerance
        )
    assert streamed._cache == {}
    assert len(cached._cache) == 2  # one matrix per dtype


@pytest.mark.parametrize("max_cache_bytes", [0, 512 * 2**20])
def test_chunked_batches_equal_one_batch(max_cache_bytes):
    projector = DenseProjector(dim=40, seed=1, block_rows=16, max_cache_bytes=max_cache_bytes)
    x = _features(23, 50)
    whole = projector.project(x)
    chunks = torch.cat([projector.project(x[start : start + 5]) for start in range(0, 23, 5)])
    single_rows = torch.cat([projector.project(x[i : i + 1]) for i in range(23)])
    torch.testing.assert_close(chunks, whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(single_rows, whole, rtol=1e-12, atol=1e-12)


def test_matrix_is_defined_per_block_and_does_not_depend_on_dtype():
    projector = DenseProjector(dim=16, kind="gaussian", seed=9, block_rows=8)
    matrix = projector.matrix(20)
    # Rows of block 1 are drawn from their own generator: the same for every p that contains it.
    assert torch.equal(projector.matrix(16)[8:16], matrix[8:16])
    # float32 uses the float64 matrix rounded to float32.
    assert torch.equal(projector.matrix(20, dtype=torch.float32), matrix.to(torch.float32))
    assert not torch.equal(matrix[:8], matrix[8:16])
    other_blocks = DenseProjector(dim=16, kind="gaussian", seed=9, block_rows=4).matrix(20)
    assert not torch.equal(other_blocks, matrix)  # block_rows is part of the definition


def test_cached_path_does_not_regenerate(monkeypatch):
    projector = DenseProjector(dim=16, seed=0, block_rows=8)
    x = _features(3, 20)
    first = projector.project(x)

    def fail(*args, **kwargs):
        raise AssertionError("the cached path regenerated a block")

    monkeypatch.setattr(DenseProjector, "_block", fail)
    assert torch.equal(projector.project(x), first)
    with pytest.raises(AssertionError, match="regenerated"):
        DenseProjector(dim=16, seed=0, block_rows=8, max_cache_bytes=0).project(x)


def test_cache_stays_within_budget():
    # One float64 [20, 16] matrix is 2560 bytes; the budget fits one, not two.
    projector = DenseProjector(dim=16, seed=0, max_cache_bytes=4000)
    expected_21 = _features(2, 21) @ projector.matrix(21)
    projector.project(_features(2, 20))
    out_21 = projector.project(_features(2, 21))
    assert list(projector._cache) == [(21, "cpu", torch.float64)]
    torch.testing.assert_close(out_21, expected_21, rtol=1e-12, atol=1e-12)


def test_different_seeds_and_kinds_give_different_matrices():
    base = DenseProjector(dim=16, seed=0).matrix(20)
    assert not torch.equal(DenseProjector(dim=16, seed=1).matrix(20), base)
    assert not torch.equal(DenseProjector(dim=16, kind="gaussian", seed=0).matrix(20), base)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "dim must be an integer >= 1"),
        ({"dim": 2.5}, "dim must be an integer >= 1"),
        ({"dim": 4, "kind": "uniform"}, "kind must be one of"),
        ({"dim": 4, "seed": "0"}, "seed must be an int"),
        ({"dim": 4, "block_rows": 0}, "block_rows must be an integer >= 1"),
        ({"dim": 4, "max_cache_bytes": -1}, "max_cache_bytes must be >= 0"),
        ({"dim": 4, "input_dim": 0}, "input_dim must be an integer >= 1"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DenseProjector(**kwargs)
