"""experiments/lds_table.py: LDS records of one ground truth in one table."""

import json
import re
import sys

import numpy as np
import pytest

from experiments.lds_table import collect, main, member_count
from tda.atomic import file_digest
from tda.scores import save_scores

TRUTH = {"alpha": 0.5, "subsets": 100, "seeds": [0, 1, 2]}


def _write(workspace, name: str, mean: float, truth=TRUTH, parameters=None, timed=None) -> None:
    solver = {"_target_": "tda.curvature.EKFACSolver", "per_layer": True}
    attributor = {"_target_": "tda.methods.InfluenceFunction", "solver": solver}
    if parameters:
        attributor["parameters"] = parameters
    record = {
        "lds": {"mean": mean, "ci_low": mean - 0.01, "ci_high": mean + 0.01},
        "noise_ceiling": {"mean": 0.8},
        "ground_truth": truth,
        "scores_made_with": {"attributor": attributor, "checkpoints": ["a", "b"], **(timed or {})},
        "settings": {"large": "left out"},
        "command": ["python", "experiments/lds.py", f"scores_name={name}"],
    }
    path = workspace / "results" / f"lds-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_the_table_names_each_attributor_its_parameters_and_members(tmp_path, monkeypatch):
    _write(tmp_path, "all", 0.3)
    _write(tmp_path, "head", 0.2, parameters=["head.weight", "head.bias"])
    rule = {"_target_": "tda.curvature.kronecker_parameters", "_partial_": True}
    _write(tmp_path, "linear", 0.25, parameters=rule)
    output = tmp_path / "out.json"
    names = ["all", "head", "linear"]
    argv = ["lds_table", str(tmp_path), "--scores", *names, "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    written = json.loads(output.read_text())
    table = written["table"]
    assert (
        "| all | InfluenceFunction (EKFACSolver, per_layer=True) | 2 | 0.300 [0.290, 0.310] |"
        in table
    )
    assert (
        "| head | InfluenceFunction (EKFACSolver, per_layer=True, head.weight, head.bias) |"
        in table
    )
    assert "| linear | InfluenceFunction (EKFACSolver, per_layer=True, " in table
    assert "parameters=kronecker_parameters) |" in table
    assert written["ground_truth"] == TRUTH and list(written["runs"]) == names
    assert "settings" not in written["runs"]["all"]
    assert written["runs"]["head"]["run_command"][-1] == "scores_name=head"


def test_members_count_models_not_their_checkpoints():
    """TracIn and Source read 5 checkpoints of each of 5 members: the column said 25."""
    trajectory = [f"seed-{s}.epoch-{e:04d}" for s in range(5) for e in (2, 4, 6, 8, 10)]
    assert member_count({"checkpoints": trajectory}) == "5"
    assert member_count({"checkpoints": trajectory, "members": [0, 1, 2, 3, 4, 5]}) == "6"
    assert member_count({}) == "-"


def test_missing_records_and_other_ground_truths_are_refused(tmp_path):
    _write(tmp_path, "one", 0.3)
    with pytest.raises(FileNotFoundError, match=r"\['two', 'three'\]"):
        collect(tmp_path, ["one", "two", "three"])
    _write(tmp_path, "other", 0.3, truth={**TRUTH, "subsets": 50})
    with pytest.raises(ValueError, match="different ground truths"):
        collect(tmp_path, ["one", "other"])


def test_the_table_gives_score_py_s_time_where_it_was_recorded(tmp_path, monkeypatch):
    _write(tmp_path, "timed", 0.3, timed={"seconds": 7.94, "threads": 2})
    _write(tmp_path, "older", 0.3)
    output = tmp_path / "out.json"
    argv = ["lds_table", str(tmp_path), "--scores", "timed", "older", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    rows = json.loads(output.read_text())["table"].splitlines()
    assert rows[0].endswith("| noise ceiling | scoring (s) |")
    assert rows[2].endswith("| 0.800 | 7.9 (2 threads) |")
    assert rows[3].endswith("| 0.800 | - |")


def test_the_record_carries_the_members_training_records(tmp_path, monkeypatch):
    _write(tmp_path, "all", 0.3, timed={"checkpoints": ["seed-0.epoch-0010", "seed-3.epoch-0010"]})
    train = {"seed": 3, "checkpoint": "epoch-0010", "test_accuracy": 0.41, "parameters": 34816}
    (tmp_path / "results" / "train-seed-3.json").write_text(json.dumps(train))
    (tmp_path / "results" / "train-seed-7.json").write_text(json.dumps({**train, "seed": 7}))
    output = tmp_path / "out.json"
    argv = ["lds_table", str(tmp_path), "--scores", "all", "--output", str(output)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert json.loads(output.read_text())["members"] == {"3": train}  # seed 0 has no record


def test_records_of_scores_since_replaced_are_refused_with_the_command_to_recompute(tmp_path):
    """The table printed the LDS of 2-member scores after score.py had replaced them with
    another member count's: the record's sha256 no longer matched the file."""
    scores = tmp_path / "scores" / "trak.npy"
    digest = {"sha256": file_digest(save_scores(scores, np.ones((2, 3)), {}))}
    _write(tmp_path, "trak", 0.3, timed=digest)
    _write(tmp_path, "gone", 0.3, timed={"sha256": "0" * 64})  # its scores were deleted
    _write(tmp_path, "older", 0.3)  # recorded before scores carried a sha256
    assert list(collect(tmp_path, ["trak", "gone", "older"])) == ["trak", "gone", "older"]
    save_scores(scores, np.zeros((2, 3)), {})
    record = tmp_path / "results" / "lds-trak.json"
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{record} holds the LDS of scores since replaced (their sha256 differs from the one "
            "it recorded): recompute it with `python experiments/lds.py scores_name=trak` or "
            "leave 'trak' out"
        ),
    ):
        collect(tmp_path, ["older", "trak"])
