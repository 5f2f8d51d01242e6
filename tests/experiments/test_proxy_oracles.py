"""The proxy-oracle link: correlations of paired oracles' margins, pair by pair."""

import numpy as np
import pytest

from experiments.proxy_oracles import link, paired_correlations


def test_each_row_is_correlated_with_its_own_partner_only():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(3, 50))
    partners = np.stack([2.0 * real[0] + 1.0, -real[1], rng.normal(size=50)])
    correlations = paired_correlations(real, partners)
    assert correlations[:2] == pytest.approx([1.0, -1.0])
    assert abs(correlations[2]) < 0.5


def test_shared_and_independent_partners_are_summarised_apart():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(4, 30))
    result = link(real, real + 0.1 * rng.normal(size=real.shape), rng.normal(size=real.shape))
    assert result["shared_seed"]["mean"] > 0.9 > 0.5 > abs(result["independent_seed"]["mean"])
    assert result["shared_seed"]["n"] == result["independent_seed"]["n"] == 4


def test_groups_of_other_sizes_are_refused():
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_correlations(np.zeros((3, 5)), np.zeros((2, 5)))
