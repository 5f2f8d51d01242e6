"""experiments/dmm_draws.py: results of several forget-set draws, averaged per method."""

import json

import pytest

from experiments.dmm_draws import METHODS, collect, goal, markdown, run_name, summary
from experiments.run_records import run_path


def _write(workspace, method, seed, klom, gap=1.0, status="ok", seeds=(0, 1)):
    path = run_path(workspace, run_name(method, "random_1pct", seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "seeds": list(seeds), "average_gap": gap,
              "klom": {"forget": klom, "forget_floor": 4.0},
              "time_fraction": {"mean": 0.05}}  # fmt: skip
    path.write_text(json.dumps(record))


def test_means_over_draws_decide_the_goal(tmp_path):
    kloms = {"dmm-trak-m20": (6.0, 5.0), "dmm-oracle": (4.0, 4.0), "ft": (7.0, 6.0)}
    for method in METHODS:
        for seed, value in zip((0, 10), kloms.get(method, (8.0, 8.0)), strict=True):
            _write(tmp_path, method, seed, value)
    table = summary(collect(tmp_path, "random_1pct", [0, 10]))
    assert table["dmm-trak-m20"]["klom_forget_mean"] == 5.5
    assert table["oracle vs oracle (floor)"]["klom_forget"] == [4.0, 4.0]
    checked = goal(table)
    assert checked["beats"]["ft"] and checked["within_2x_of_oracle_matching"]
    assert "| dmm-trak-m20 | 6.00 | 5.00 | 5.50 | 1.00 |" in markdown(table, [0, 10])
    assert run_name("ft", "random_1pct", 0) == "unlearn-ft-random_1pct"
    assert run_name("ft", "random_1pct", 10) == "unlearn-ft-random_1pct-seed10"


def test_missing_unfinished_or_mismatched_draws_are_refused(tmp_path):
    for method in METHODS:
        _write(tmp_path, method, 0, 5.0)
    with pytest.raises(FileNotFoundError, match="seed10.json does not exist"):
        collect(tmp_path, "random_1pct", [0, 10])
    _write(tmp_path, "ft", 0, 5.0, status="diverged")
    with pytest.raises(ValueError, match="status 'diverged'"):
        collect(tmp_path, "random_1pct", [0])
    _write(tmp_path, "ft", 0, 5.0, seeds=(5, 6))
    with pytest.raises(ValueError, match=r"\['ft'\] were measured on other originals"):
        collect(tmp_path, "random_1pct", [0])
