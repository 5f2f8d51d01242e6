"""Where benchmark records go: a full run into results/, a smoke run never there."""

from pathlib import Path

import pytest

from benchmarks.record import (
    REPO_ROOT,
    detection_summary,
    detection_table,
    mean_and_std,
    mean_std_cell,
    output_path,
)


def test_a_full_run_writes_results_and_a_smoke_run_writes_under_runs():
    assert output_path("lds", False, None) == REPO_ROOT / "results" / "lds.json"
    assert output_path("lds", True, None) == REPO_ROOT / "runs" / "quick" / "lds.json"
    assert output_path("lds", True, "elsewhere.json") == Path("elsewhere.json")


def test_spreads_over_seeds_are_sample_standard_deviations():
    """ddof=1, as unlearn.benchmark.interval and tda.valuation's pruning intervals use."""
    assert mean_and_std([0.0, 0.5, 1.0]) == {"mean": 0.5, "std": 0.5}  # ddof=0 gives 0.408
    assert mean_and_std([0.25]) == {"mean": 0.25, "std": None}  # no spread from one seed
    assert mean_std_cell({"mean": 0.9, "std": 0.0433}, 100) == "90.0 ± 4.3"
    assert mean_std_cell({"mean": 0.99781, "std": 0.00228}, digits=3) == "0.998 ± 0.002"
    assert mean_std_cell({"mean": 0.25, "std": None}, 100) == "25.0"


def test_a_detection_summary_is_one_row_per_method_in_percent():
    rows = [
        {"method": "grad-cos", "found_at": {"0.01": f}, "auc": a, "seconds": 0.1}
        for f, a in ((0.9, 0.99), (0.8, 0.97))
    ] + [{"method": "random", "found_at": {"0.01": 0.01}, "auc": 0.5, "seconds": 0.0}]
    table = detection_summary(rows, {"found_at_1": "0.01"})
    assert [(e["method"], e["seeds"]) for e in table] == [("grad-cos", 2), ("random", 1)]
    assert table[0]["found_at_1"]["mean"] == pytest.approx(0.85) and table[1]["auc"]["std"] is None
    lines = detection_table(table, ["in top 1% (%)"]).splitlines()
    assert lines[0] == "| method | in top 1% (%) | AUC | seconds |"
    assert lines[2] == "| grad-cos | 85.0 ± 7.1 | 0.980 ± 0.014 | 0.1 ± 0.0 |"
    assert lines[3] == "| random | 1.0 | 0.500 | 0.0 |"
