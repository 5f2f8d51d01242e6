"""experiments/dmm_table.py: the goal check and the predictor table read the records right."""

from experiments.dmm_table import goal_check, meta_table


def _record(klom_forget: float, time_fraction: float = 0.05) -> dict:
    return {
        "status": "ok",
        "klom": {"forget": klom_forget},
        "average_gap": 1.0,
        "time_fraction": {"mean": time_fraction},
    }


def test_goal_check_compares_dmm_with_each_listed_baseline_and_oracle_matching():
    found = {
        "dmm-trak-m20": _record(6.0, time_fraction=0.08),
        "dmm-oracle": _record(3.5),
        "ft": _record(7.0),
        "salun": _record(5.0),
        "rl": _record(1.0),  # not in the list of baselines
    }
    goal = goal_check(found)
    assert goal["beats"] == {"ft": True, "salun": False}
    assert goal["within_2x_of_oracle_matching"] and goal["within_10pct_time"]
    assert not goal_check({**found, "dmm-trak-m20": _record(7.5, 0.2)})[
        "within_2x_of_oracle_matching"
    ]
    assert goal_check({"ft": _record(7.0)}) == {"complete": False}
    assert not goal_check(found, time_fraction=0.12)["within_10pct_time"]


def test_meta_table_marks_the_oracle_and_missing_runs():
    quality = {"dmm-trak-m1": {"lds": 0.1}, "dmm-trak-m20": {"lds": 0.2}}
    runs = {"class": {"dmm-trak-m1": _record(9.0), "dmm-oracle": _record(5.0)}}
    table = meta_table(quality, runs)
    assert "| trak-m1 | 0.100 | 9.00 | 1.00 |" in table
    assert "| oracle | (oracle) | 5.00 | 1.00 |" in table
    assert "| trak-m20 | 0.200 | - | - |" in table
