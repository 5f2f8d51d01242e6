"""bench_poison's table: sample standard deviations over seeds, as its record holds."""

import json
import statistics

import pytest

from benchmarks.bench_poison import summary
from benchmarks.record import REPO_ROOT


def test_the_summary_is_the_mean_and_sample_std_over_seeds():
    found = [(0.925, 0.95), (0.85, 0.9), (0.925, 0.975)]
    rows = [
        {"method": "grad-cos", "found_at": {"0.01": a, "0.02": b}, "auc": b, "seconds": 0.1}
        for a, b in found
    ]
    (entry,) = summary(rows)
    assert entry["seeds"] == 3
    assert entry["found_at_0.01"]["std"] == pytest.approx(statistics.stdev([0.925, 0.85, 0.925]))
    assert entry["auc"]["std"] == pytest.approx(statistics.stdev([0.95, 0.9, 0.975]))
    assert entry["seconds"] == {"mean": pytest.approx(0.1), "std": pytest.approx(0.0, abs=1e-15)}


def test_the_recorded_summary_is_the_summary_of_the_recorded_seeds():
    results = json.loads((REPO_ROOT / "results" / "poison.json").read_text())["results"]
    assert results["summary"] == summary(results["per_seed"])
