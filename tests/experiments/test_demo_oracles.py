"""The demo's gaps against independent oracles: one gap per oracle, and their interval."""

import pytest

from experiments.demo_oracles import gaps_against

ORACLES = [
    {"UA": 40.0, "RA": 100.0, "TA": 65.0, "MIA": 45.0},
    {"UA": 36.0, "RA": 98.0, "TA": 67.0, "MIA": 41.0},
]


def test_each_method_gets_its_gap_to_each_oracle_and_their_mean():
    table = gaps_against({"SalUn": {"UA": 38.0, "RA": 99.0, "TA": 66.0, "MIA": 43.0}}, ORACLES)
    row = table["SalUn"]
    assert row["gaps"] == [1.5, 1.5] and row["mean"] == 1.5 and row["n"] == 2
    assert row["ci95"] == pytest.approx(0.0)


def test_a_method_missing_a_metric_is_refused_by_name():
    with pytest.raises(ValueError, match="MIA"):
        gaps_against({"FT": {"UA": 0.0, "RA": 100.0, "TA": 60.0}}, ORACLES)
