"""Where benchmark records go: a full run into results/, a smoke run never there."""

from pathlib import Path

from benchmarks.record import REPO_ROOT, output_path


def test_a_full_run_writes_results_and_a_smoke_run_writes_under_runs():
    assert output_path("lds", False, None) == REPO_ROOT / "results" / "lds.json"
    assert output_path("lds", True, None) == REPO_ROOT / "runs" / "quick" / "lds.json"
    assert output_path("lds", True, "elsewhere.json") == Path("elsewhere.json")
