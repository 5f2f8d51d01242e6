"""Where benchmark records go: a full run into results/, a smoke run never there."""

from pathlib import Path

from benchmarks.record import REPO_ROOT, mean_and_std, mean_std_cell, output_path


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
