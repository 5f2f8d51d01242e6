"""experiments/run_records.py: the one reader of unlearning runs' records."""

import json

import pytest

from experiments.run_records import find_run, first_finished, read_run, run_path


def _write(workspace, name, record):
    path = run_path(workspace, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_a_run_is_read_back_from_its_results_file(tmp_path):
    _write(tmp_path, "unlearn-ft-class", {"status": "ok", "tuning": {"value": 0.1}})
    assert run_path(tmp_path, "unlearn-ft-class") == tmp_path / "results" / "unlearn-ft-class.json"
    assert read_run(tmp_path, "unlearn-ft-class", finished=True, tuned=True)["tuning"] == {
        "value": 0.1
    }


def test_a_missing_run_is_refused_with_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no run 'unlearn-x'.*unlearn-x.json does not"):
        read_run(tmp_path, "unlearn-x")
    assert find_run(tmp_path, "unlearn-x") is None


def test_unfinished_or_untuned_runs_are_refused_only_when_asked(tmp_path):
    _write(tmp_path, "unlearn-y", {"status": "diverged", "tuning": None})
    assert read_run(tmp_path, "unlearn-y")["status"] == "diverged"
    with pytest.raises(ValueError, match="status 'diverged', not 'ok'"):
        read_run(tmp_path, "unlearn-y", finished=True)
    _write(tmp_path, "unlearn-z", {"status": "ok", "tuning": None})
    with pytest.raises(ValueError, match="made no proxy search"):
        read_run(tmp_path, "unlearn-z", tuned=True)


def test_reference_rows_come_from_the_first_finished_run_and_need_one():
    found = {"ga": {"status": "diverged"}, "ft": {"status": "ok", "n": 1}, "rl": {"status": "ok"}}
    assert first_finished(found, "class") == {"status": "ok", "n": 1}
    with pytest.raises(ValueError, match=r"no run on forget set 'class' finished \(\['ga'\]"):
        first_finished({"ga": {"status": "diverged"}}, "class")
