"""experiments/ntk.py: one record per job, naming what the job varied and how it was made."""

import json

from tests.experiments.entry import run_entry_point


def test_jobs_of_a_sweep_keep_their_own_records_with_their_settings(tmp_path):
    """Every job wrote ntk-<kernel>-<machine>.json: a sweep over seeds or projection sizes kept
    only its last job, and the record named neither."""
    for seed in (0, 1):
        run_entry_point("ntk", tmp_path, "queries=20", f"model_seed={seed}")
    run_entry_point("ntk", tmp_path, "queries=20", "ntk/kernel=pseudo_projected")
    names = sorted(path.name for path in (tmp_path / "results").glob("*.json"))
    expected = ["ntk-pseudo_projected-logistic-k16-seed0.json"]
    expected += ["ntk-trace-logistic-seed0.json", "ntk-trace-logistic-seed1.json"]
    assert names == expected
    record = json.loads((tmp_path / "results" / "ntk-trace-logistic-seed1.json").read_text())
    assert record["model_seed"] == 1 and record["settings"]["queries"] == 20
    assert "model_seed=1" in record["overrides"] and "torch" in record["versions"]
