"""bench_valuation's table: sample standard deviations over seeds, as its records hold."""

import json
import statistics

import pytest

from benchmarks.bench_valuation import summary
from benchmarks.record import REPO_ROOT


def test_the_summary_is_the_mean_and_sample_std_over_seeds():
    found = [(0.30, 0.45), (0.35, 0.50), (0.25, 0.48)]
    rows = [
        {"method": "TRAK", "found_at": {"0.1": a, "0.2": b}, "auc": 0.7 + a, "seconds": 1.0}
        for a, b in found
    ]
    (entry,) = summary(rows)
    assert entry["seeds"] == 3
    assert entry["found_at_10"]["std"] == pytest.approx(statistics.stdev([0.30, 0.35, 0.25]))
    assert entry["found_at_20"]["std"] == pytest.approx(statistics.stdev([0.45, 0.50, 0.48]))
    assert entry["auc"]["mean"] == pytest.approx(1.0) and entry["seconds"]["std"] == 0.0
    assert summary(rows[:1])[0]["auc"] == {"mean": pytest.approx(1.0), "std": None}


@pytest.mark.parametrize(
    "name", ["valuation.json", "valuation-cnn.json", "valuation-cnn-checkpoints30.json"]
)
def test_each_recorded_summary_is_the_summary_of_its_recorded_seeds(name):
    results = json.loads((REPO_ROOT / "results" / name).read_text())["results"]
    assert results["summary"] == summary(results["per_seed"])
