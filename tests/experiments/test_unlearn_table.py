"""experiments/unlearn_table.py: only complete, comparable results make a table."""

import json

import pytest

from experiments.unlearn_table import (
    METHODS,
    collect,
    display_name,
    klom_cell,
    main,
    setting_text,
    tuned,
)


def _record(**changes) -> dict:
    record = {"status": "ok", "forget_size": 40, "seeds": [0, 1], "oracle_seeds": [1000, 1001]}
    return record | changes


def _write(workspace, method: str, forget: str, record: dict) -> None:
    path = workspace / "results" / f"unlearn-{method}-{forget}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_collect_refuses_a_forget_set_with_a_missing_method(tmp_path):
    _write(tmp_path, "ft", "class", _record())
    with pytest.raises(
        FileNotFoundError, match=r"\[.salun.\]; name the methods .* --allow-missing"
    ):
        collect(tmp_path, "class", ["ft", "salun"], allow_missing=False)
    assert list(collect(tmp_path, "class", ["ft", "salun"], allow_missing=True)) == ["ft"]
    with pytest.raises(FileNotFoundError, match="random_1pct"):
        collect(tmp_path, "random_1pct", ["ft"], allow_missing=True)


def test_collect_refuses_results_on_different_oracles(tmp_path):
    _write(tmp_path, "ft", "class", _record())
    _write(tmp_path, "salun", "class", _record(oracle_seeds=[1000, 1001, 1002, 1003]))
    with pytest.raises(ValueError, match="oracle_seeds"):
        collect(tmp_path, "class", ["ft", "salun"], allow_missing=False)


def test_tuned_marks_grid_edges_fallbacks_and_total_divergence():
    tuning = {"grid": [0.01, 0.03, 0.1], "chosen": 0.1}
    assert tuned(_record(tuning=None)) == "-"
    assert tuned(_record(tuning=tuning, used=0.1)) == "0.1 [0.01, 0.1] (edge)"
    assert tuned(_record(tuning=tuning, used=0.03)) == "0.03 [0.01, 0.1] (fallback)"
    assert tuned(_record(status="diverged", tuning=tuning)) == "none of [0.01, 0.1]"


def test_tuned_shows_each_key_of_a_search_over_several():
    grid = [[lr, fraction] for lr in (0.01, 0.1) for fraction in (0.1, 0.5, 0.9)]
    tuning = {"grid": grid, "chosen": [0.01, 0.5]}
    assert (
        tuned(_record(tuning=tuning, used=[0.01, 0.5]))
        == "0.01 / 0.5 [0.01, 0.1] / [0.1, 0.9] (edge)"
    )
    assert tuned(_record(tuning=tuning, used=[0.1, 0.9])) == (
        "0.1 / 0.9 [0.01, 0.1] / [0.1, 0.9] (edge) (fallback)"
    )
    assert setting_text([0.01, 0.5]) == "0.01 / 0.5" and setting_text(3e-4) == "0.0003"


def test_tuned_shows_a_setting_that_is_no_number_as_it_is():
    grid = [[matching, lr] for matching in ("fine_tune", "exact") for lr in (0.001, 0.01)]
    tuning = {"grid": grid, "chosen": ["exact", 0.001]}
    assert (
        tuned(_record(tuning=tuning, used=["exact", 0.001]))
        == "exact / 0.001 [fine_tune, exact] / [0.001, 0.01] (edge)"
    )
    three = [[m, lr] for m in ("fine_tune", "exact") for lr in (0.001, 0.003, 0.01)]
    middle = {"grid": three, "chosen": ["exact", 0.003]}  # "exact" ends its axis: no edge
    assert tuned(_record(tuning=middle, used=["exact", 0.003])) == (
        "exact / 0.003 [fine_tune, exact] / [0.001, 0.01]"
    )


def test_klom_cells_show_the_interval_where_one_was_recorded():
    klom = {"forget": 9.4791, "forget_ci95": [9.3995, 9.538], "retain": 5.0}
    assert klom_cell(klom, "forget") == "9.48 (9.40-9.54)"
    assert klom_cell(klom, "retain") == "5.00"


def test_display_names_follow_the_readme_and_keep_a_variant_or_an_unknown_name():
    spelled = [display_name(m) for m in (*METHODS, "npo", "wagle", "wagle_npo")]
    assert spelled == [
        "retrain",
        "FT",
        "GA",
        "RL",
        "GradDiff",
        "SalUn",
        "ℓ1-sparse",
        "prune → unlearn",
        "NPO",
        "WAGLE (GradDiff)",
        "WAGLE (NPO)",
    ]
    assert display_name("salun-mixed") == "SalUn (mixed)"
    assert display_name("ft-adam") == "FT (adam)"
    assert display_name("wagle_npo-joint") == "WAGLE (NPO, joint)"
    assert display_name("dmm-trak-m20") == "DMM (trak-m20)"
    assert display_name("my_method") == "my_method"  # not a known unlearner: as given


def _finished() -> dict:
    """A complete ``experiments/unlearning.py`` record of one method, as the table reads it."""
    metrics = {key: {"mean": 50.0, "ci95": 1.0} for key in ("UA", "RA", "TA", "MIA")}
    klom = {"forget": 5.0, "retain": 5.0, "validation": 5.0}
    original = {"metrics": metrics, "average_gap": 1.0, "klom": klom}
    return _record(
        metrics=metrics,
        average_gap=1.0,
        klom=klom,
        time_fraction={"mean": 0.1},
        original=original,
        oracle_metrics=metrics,
        settings={"threads": 1},
    )


def test_the_printed_tables_spell_methods_as_the_readme_and_the_record_keeps_the_keys(
    tmp_path, monkeypatch, capsys
):
    """The tables said ``l1_sparse`` and ``prune_then_unlearn`` where the README says
    ``ℓ1-sparse`` and ``prune → unlearn``; the runs others read stay keyed by result name."""
    methods = ["retrain", "l1_sparse", "prune_then_unlearn", "salun-mixed", "ga"]
    for method in methods[:-1]:
        _write(tmp_path, method, "class", _finished())
    output = tmp_path / "table.json"
    arguments = ["unlearn_table", str(tmp_path), "--forget", "class", "--output", str(output)]
    monkeypatch.setattr("sys.argv", [*arguments, "--allow-missing", "--methods", *methods])
    main()
    printed = capsys.readouterr().out.splitlines()
    labels = [line.split(" | ")[0].removeprefix("| ") for line in printed if line.startswith("| ")]
    assert labels[:6] == [
        "method",
        "retrain",
        "ℓ1-sparse",
        "prune → unlearn",
        "SalUn (mixed)",
        "GA",
    ]
    record = json.loads(output.read_text())
    assert list(record["runs"]["class"]) == methods[:-1]
    assert "| GA | no result |" in record["tables"]["class"]


def test_without_output_the_tables_are_printed_and_nothing_is_written(
    tmp_path, monkeypatch, capsys
):
    _write(tmp_path, "ft", "class", _finished())
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr("sys.argv", ["unlearn_table", str(tmp_path), "--forget", "class",
                                     "--allow-missing", "--methods", "ft"])  # fmt: skip
    main()
    assert "| FT |" in capsys.readouterr().out
    assert sorted(tmp_path.rglob("*")) == before
