"""layer_sketch: the exact split of dim, and the two block combinations against explicit loops."""

import pytest
import torch

from tda.features.layer_sketch import (
    khatri_rao_block,
    kronecker_block,
    proportional_shares,
)


@pytest.mark.parametrize(
    ("dim", "weights", "expected"),
    [
        (10, [1, 1], [5, 5]),
        (4, [1, 1, 1], [2, 1, 1]),  # a tie goes to the earlier weight
        (5, [1000, 1, 1], [3, 1, 1]),  # at least 1 each
        (3, [7, 5, 9], [1, 1, 1]),
        (2048, [5248, 16512, 1290], [467, 1466, 115]),  # the MNIST-1D MLP
    ],
)
def test_proportional_shares(dim, weights, expected):
    assert proportional_shares(dim, weights) == expected


def test_proportional_shares_sum_to_dim_and_round_one_plus_the_rest_split():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        count = int(torch.randint(1, 6, (1,), generator=generator))
        weights = torch.randint(1, 10_000, (count,), generator=generator).tolist()
        dim = count + int(torch.randint(0, 5000, (1,), generator=generator))
        shares = proportional_shares(dim, weights)
        assert sum(shares) == dim and min(shares) >= 1
        for share, weight in zip(shares, weights, strict=True):
            assert abs(share - 1 - (dim - count) * weight / sum(weights)) < 1


@pytest.mark.parametrize(("dim", "weights"), [(2, [1, 1, 1]), (4, [3, 0])])
def test_proportional_shares_rejects_impossible_splits(dim, weights):
    with pytest.raises(ValueError):
        proportional_shares(dim, weights)


def test_blocks_equal_explicit_sums_over_positions():
    generator = torch.Generator().manual_seed(1)
    out, inp = (torch.randn(2, 3, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    kronecker = torch.stack(
        [sum(torch.outer(out[i, t], inp[i, t]) for t in range(3)) for i in (0, 1)]
    )
    torch.testing.assert_close(
        kronecker_block(out, inp), kronecker.reshape(2, 16), rtol=0, atol=1e-14
    )
    khatri_rao = torch.stack([sum(out[i, t] * inp[i, t] for t in range(3)) for i in (0, 1)])
    torch.testing.assert_close(khatri_rao_block(out, inp), khatri_rao, rtol=0, atol=1e-14)
