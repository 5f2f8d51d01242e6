"""The hindsight check: every grid value scored on F, the proxy's choice beside the best one."""

import json

import pytest

from experiments import hindsight


def _result(grid, proxy_scores, forget_gaps, forget_kloms) -> dict:
    """A method's outcome with the given proxy scores and scores on F."""

    def selection(scores, gaps, kloms):
        return {
            "parameter": "lr", "grid": grid, "criterion": "gap+klom", "scores": scores,
            "gaps": gaps, "kloms": kloms, "untouched": None, "per_proxy": None,
            "metrics": [None] * len(grid), "oracle_metrics": {}, "chosen": None,
        }  # fmt: skip

    forget_scores = [
        None if g is None else g + k for g, k in zip(forget_gaps, forget_kloms, strict=True)
    ]
    return {
        "proxy": selection(proxy_scores, proxy_scores, [0.0] * len(grid)),
        "forget": selection(forget_scores, forget_gaps, forget_kloms),
    }


def test_the_proxy_choice_falls_back_past_a_value_that_diverged_on_f():
    result = _result([0.1, 0.3, 1.0], [2.0, 1.0, 3.0], [4.0, None, 5.0], [6.0, None, 7.0])
    assert hindsight.choice(result, "proxy") == {"value": 0.1, "gap": 4.0, "klom": 6.0}
    assert hindsight.choice(result, "forget")["value"] == 0.1  # best on F: 4 + 6 < 5 + 7
    everything_diverged = _result([0.1], [1.0], [None], [None])
    with pytest.raises(ValueError, match="every value of the proxy's ranking diverged on F"):
        hindsight.choice(everything_diverged, "proxy")


def test_the_goal_needs_both_measures_strictly_below_every_baseline():
    rows = {
        "ft": {"gap": 5.0, "klom": 8.0},
        "ga": {"gap": 6.0, "klom": 7.0},
        "rl": {"gap": 3.0, "klom": 9.0},
        "salun": {"gap": 2.0, "klom": 6.5},  # below all three on both
        "l1_sparse": {"gap": 3.0, "klom": 6.0},  # ties RL's gap
    }
    assert hindsight.goal(rows) == {"salun": True, "l1_sparse": False}
    del rows["ga"]
    assert hindsight.goal(rows) == {}  # without every baseline there is nothing to check


def test_reachable_values_beat_every_baseline_row_on_both_measures():
    baselines = {"ft": {"gap": 5.0, "klom": 8.0}, "ga": {"gap": 6.0, "klom": 7.0}}
    baselines["rl"] = {"gap": 3.0, "klom": 9.0}
    grid = [0.1, 0.3, 1.0, 3.0]
    salun = _result(grid, [1.0] * 4, [2.0, 2.0, 4.0, None], [6.9, 7.0, 6.0, None])
    assert hindsight.reachable({"salun": salun}, baselines) == {"salun": [0.1]}
    nowhere = _result(grid, [1.0] * 4, [3.0, 9.0, 1.0, 1.0], [1.0, 1.0, 8.5, 7.5])
    assert hindsight.reachable({"l1_sparse": nowhere}, baselines) == {"l1_sparse": []}


def test_a_tiny_run_scores_the_proxy_choice_on_f_and_resumes(tmp_path, monkeypatch):
    overrides = [
        f"workspace={tmp_path / 'ws'}", "models=2", "tuning.models=2", "tuning.grid=[0.01,0.1]",
        "klom_floor=false", "progress=false",
    ]  # fmt: skip
    cfg = hindsight.compose_method("tiny", "random_10pct", "ft", overrides)
    path = tmp_path / "kept.json"
    result = hindsight.kept_outcome(cfg, path)
    assert result["proxy"]["grid"] == result["forget"]["grid"] == [0.01, 0.1]
    assert result["forget"]["criterion"] == "gap+klom" and None not in result["forget"]["kloms"]
    proxy_choice = hindsight.choice(result, "proxy")
    assert proxy_choice["value"] == result["proxy"]["chosen"]
    assert proxy_choice["gap"] in result["forget"]["gaps"]
    # the proxy's scores are not F's: the proxy is another forget set, with other oracles
    assert result["proxy"]["gaps"] != result["forget"]["gaps"]

    def must_not_run(cfg):
        raise AssertionError("a kept outcome was recomputed")

    monkeypatch.setattr(hindsight, "outcome", must_not_run)
    assert hindsight.kept_outcome(cfg, path) == json.loads(json.dumps(result))
    other = hindsight.compose_method("tiny", "random_10pct", "ft", [*overrides, "models=3"])
    with pytest.raises(AssertionError, match="recomputed"):
        hindsight.kept_outcome(other, path)  # other settings: not read back


def test_a_method_without_a_search_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unlearner=retrain searches no hyperparameter"):
        hindsight.compose_method("tiny", "class", "retrain", [f"workspace={tmp_path}"])


def test_method_overrides_are_grouped_by_method_and_malformed_ones_named():
    given = ["l1_sparse:unlearner.loop.optimizer.lr=0.01", "l1_sparse:tuning.grid=[1e-6]", "ft:x=1"]
    assert hindsight.method_overrides(given) == {
        "l1_sparse": ["unlearner.loop.optimizer.lr=0.01", "tuning.grid=[1e-6]"],
        "ft": ["x=1"],
    }
    with pytest.raises(ValueError, match="takes METHOD:OVERRIDE, got 'lr=0.01'"):
        hindsight.method_overrides(["lr=0.01"])
