"""experiments/dmm_table.py: the goal check and the predictor table read the records right."""

import json
import sys

import pytest

from experiments import dmm_table
from experiments.dmm_table import goal_check, main, meta_table


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


def test_goal_check_counts_a_tie_up_to_rounding_as_no_win():
    found = {
        "dmm-trak-m20": _record(10.0 - 1e-14),
        "dmm-oracle": _record(6.0),
        "ft": _record(10.0),
        "ga": _record(9.0 + 1e-3),
    }
    assert goal_check(found)["beats"] == {"ft": False, "ga": False}
    found["dmm-trak-m20"] = _record(9.0)
    assert goal_check(found)["beats"] == {"ft": True, "ga": True}


def test_meta_table_marks_the_oracle_and_missing_runs():
    quality = {"dmm-trak-m1": {"lds": 0.1}, "dmm-trak-m20": {"lds": 0.2}}
    runs = {"class": {"dmm-trak-m1": _record(9.0), "dmm-oracle": _record(5.0)}}
    table = meta_table(quality, runs)
    assert "| trak-m1 | 0.100 | 9.00 | 1.00 |" in table
    assert "| oracle | (oracle) | 5.00 | 1.00 |" in table
    assert "| trak-m20 | 0.200 | - | - |" in table
    # a score file's DMM run gets its own row, before the oracle
    runs["class"]["dmm-ekfac"] = _record(6.0)
    table = meta_table({**quality, "dmm-ekfac": {"lds": 0.3}}, runs, scores=["ekfac"])
    assert "| ekfac | 0.300 | 6.00 | 1.00 |" in table
    assert table.index("| ekfac |") < table.index("| oracle |")


def _full_record(klom_forget: float) -> dict:
    """A finished experiments/unlearning.py record with every field the tables read."""
    cell = {"mean": 50.0, "ci95": 1.0}
    klom = {"forget": klom_forget, "retain": 5.0, "validation": 5.0}
    floors = {f"{name}_floor": 4.9 for name in klom}
    return {
        "status": "ok",
        "metrics": dict.fromkeys(("UA", "RA", "TA", "MIA"), cell),
        "oracle_metrics": dict.fromkeys(("UA", "RA", "TA", "MIA"), cell),
        "average_gap": 1.0,
        "klom": {**klom, **floors},
        "time_fraction": {"mean": 0.05},
        "tuning": None,
        "original": {"metrics": dict.fromkeys(("UA", "RA", "TA", "MIA"), cell),
                     "average_gap": 9.0, "klom": {"forget": 9.0, "retain": 5.0, "validation": 5.0}},
        "predictor_seconds": 1.0,
    }  # fmt: skip


def test_main_without_predictor_lds_writes_tables_and_goals(tmp_path, monkeypatch):
    """``--no-lds`` (no datamodel ground truth, e.g. the CNN): comparison tables and goals only."""
    results = tmp_path / "results"
    results.mkdir()
    runs = (("dmm-trak-m20", 5.0), ("dmm-oracle", 4.0), ("dmm-head", 6.5), ("ft", 6.0), ("ga", 7.0))
    for name, klom in runs:
        record = _full_record(klom)
        (results / f"unlearn-{name}-random_10pct.json").write_text(json.dumps(record))
    output = tmp_path / "dmm.json"
    argv = ["dmm_table", str(tmp_path), "--forget", "random_10pct", "--no-lds", "--output"]
    monkeypatch.setattr(sys, "argv", [*argv, str(output)])
    main()
    written = json.loads(output.read_text())
    assert written["predictor_lds"] == {} and "predictors" not in written["tables"]
    assert written["goals"]["random_10pct"]["beats"] == {"ft": True, "ga": True}
    assert written["goals"]["random_10pct"]["head"]["beats"] == {"ft": False, "ga": True}
    assert "| dmm-trak-m20 |" in written["tables"]["random_10pct"]
    assert "| dmm-head |" in written["tables"]["random_10pct"]


def test_dmm_runs_no_row_covers_are_named_and_chosen_trak_sizes_get_rows(
    tmp_path, monkeypatch, capsys
):
    # a DMM run with dmm.models=3 used to vanish from the table without a word
    results = tmp_path / "results"
    results.mkdir()
    for name in ("dmm-trak-m3", "dmm-trak-m20", "dmm-oracle", "dmm-gradcos-train", "ft"):
        (results / f"unlearn-{name}-random_10pct.json").write_text(json.dumps(_full_record(5.0)))
    argv = ["dmm_table", str(tmp_path), "--forget", "random_10pct", "--no-lds", "--output"]
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / "a.json")])
    main()
    warned = capsys.readouterr().err
    assert "DMM records not in the table: dmm-gradcos-train, dmm-trak-m3" in warned
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / "b.json"), "--trak-models", "3", "20",
                                      "--scores", "gradcos-train"])  # fmt: skip
    main()
    assert "not in the table" not in capsys.readouterr().err
    table = json.loads((tmp_path / "b.json").read_text())["tables"]["random_10pct"]
    assert "| dmm-trak-m3 |" in table and "| dmm-gradcos-train |" in table


def test_predictor_lds_composes_the_workspaces_own_experiment(monkeypatch):
    # on a CNN or tiny workspace the default experiment's training set was read
    composed = []

    def config(overrides):
        composed.append(overrides)
        raise RuntimeError("composed")

    monkeypatch.setattr(dmm_table, "dmm_config", config)
    with pytest.raises(RuntimeError, match="composed"):
        dmm_table.predictor_lds("runs/x", overrides=["experiment=mnist1d_cnn"])
    assert composed == [["predictor=datamodels", "workspace=runs/x", "experiment=mnist1d_cnn"]]


def test_extra_dmm_runs_get_rows_and_goal_checks(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    for name, klom in (("dmm-oracle", 4.0), ("dmm-head-500it", 5.5), ("ft", 6.0)):
        (results / f"unlearn-{name}-class3.json").write_text(json.dumps(_full_record(klom)))
    argv = ["dmm_table", str(tmp_path), "--forget", "class3", "--no-lds", "--extra"]
    monkeypatch.setattr(sys, "argv", [*argv, "dmm-head-500it", "--output", str(tmp_path / "a")])
    main()
    assert "not in the table" not in capsys.readouterr().err
    written = json.loads((tmp_path / "a").read_text())
    assert "| dmm-head-500it |" in written["tables"]["class3"]
    assert written["goals"]["class3"]["dmm-head-500it"]["beats"] == {"ft": True}
