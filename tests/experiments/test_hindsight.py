"""The hindsight check: every grid value scored on F, the proxy's choice beside the best one."""

import json

import pytest

from experiments import hindsight, unlearning

SPARSE, DMM = hindsight.GOALS["sparse"], hindsight.GOALS["dmm"]


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
    with pytest.raises(ValueError, match="every value of the grid diverged on F"):
        hindsight.choice(everything_diverged, "forget", "klom")


def test_the_goal_needs_both_measures_strictly_below_every_baseline():
    rows = {
        "ft": {"gap": 5.0, "klom": 8.0},
        "ga": {"gap": 6.0, "klom": 7.0},
        "rl": {"gap": 3.0, "klom": 9.0},
        "salun": {"gap": 2.0, "klom": 6.5},  # below all three on both
        "l1_sparse": {"gap": 3.0, "klom": 6.0},  # ties RL's gap
    }
    assert SPARSE.met(rows) == {"salun": True, "l1_sparse": False}
    del rows["ga"]
    assert SPARSE.met(rows) == {}  # without every baseline there is nothing to check


def test_reachable_values_beat_every_baseline_row_on_both_measures():
    baselines = {"ft": {"gap": 5.0, "klom": 8.0}, "ga": {"gap": 6.0, "klom": 7.0}}
    baselines["rl"] = {"gap": 3.0, "klom": 9.0}
    grid = [0.1, 0.3, 1.0, 3.0]
    salun = _result(grid, [1.0] * 4, [2.0, 2.0, 4.0, None], [6.9, 7.0, 6.0, None])
    assert hindsight.reachable({"salun": salun}, baselines, SPARSE) == {"salun": [0.1]}
    nowhere = _result(grid, [1.0] * 4, [3.0, 9.0, 1.0, 1.0], [1.0, 1.0, 8.5, 7.5])
    assert hindsight.reachable({"l1_sparse": nowhere}, baselines, SPARSE) == {"l1_sparse": []}
    del baselines["rl"]
    assert hindsight.reachable({"salun": salun}, baselines, SPARSE) == {}


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
    monkeypatch.setattr(unlearning, "_versions", lambda: {"tda-unlearn": "another"})
    with pytest.raises(AssertionError, match="recomputed"):
        hindsight.kept_outcome(cfg, path)  # other library versions: not read back


def test_a_tiny_dmm_run_calibrates_its_predictor_on_the_proxy_before_scoring_on_f(tmp_path):
    overrides = [
        f"workspace={tmp_path / 'ws'}", "models=2", "tuning.models=2", "tuning.grid=[0.001,0.01]",
        "klom_floor=false", "progress=false", "dmm.models=2",
    ]  # fmt: skip
    cfg = hindsight.compose_method("tiny", "random_10pct", "dmm", overrides)
    result = hindsight.kept_outcome(cfg, tmp_path / "kept.json")
    assert result["calibration"]["scale"] >= 0 and result["calibration"]["forget_scale"] >= 0
    assert None not in result["forget"]["kloms"] and len(result["forget"]["grid"]) == 2
    assert hindsight.choice(result, "forget", "klom")["klom"] == min(result["forget"]["kloms"])


def test_a_method_without_a_search_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unlearner=retrain searches no hyperparameter"):
        hindsight.compose_method("tiny", "class", "retrain", [f"workspace={tmp_path}"])


def test_method_overrides_are_grouped_by_method_and_malformed_ones_named():
    given = ["l1_sparse:unlearner.loop.optimizer.lr=0.01", "l1_sparse:tuning.grid=[1e-6]", "ft:x=1"]
    assert hindsight.prefixed_overrides(given, "--method-overrides") == {
        "l1_sparse": ["unlearner.loop.optimizer.lr=0.01", "tuning.grid=[1e-6]"],
        "ft": ["x=1"],
    }
    with pytest.raises(ValueError, match="--method-overrides takes NAME:OVERRIDE, got 'lr=0.01'"):
        hindsight.prefixed_overrides(["lr=0.01"], "--method-overrides")


def test_a_method_name_gives_its_unlearner_family_and_variant_overrides():
    assert hindsight.method_spec("ft-adam") == ("ft-adam", "ft")
    assert hindsight.method_spec("om-sgd=dmm") == ("om-sgd", "dmm")
    assert hindsight.method_spec("l1_sparse") == ("l1_sparse", "l1_sparse")
    with pytest.raises(ValueError, match="NAME=UNLEARNER or FAMILY"):
        hindsight.method_spec("=dmm")
    own, variants = {"ft-adam": ["tuning.grid=[0.1]"]}, {"adam": ["x=Adam"], "sgd": ["x=SGD"]}
    assert hindsight.overrides_of("ft-adam", own, variants) == ["x=Adam", "tuning.grid=[0.1]"]
    assert hindsight.overrides_of("ft", own, variants) == []
    assert hindsight.family("om-sgd") == "om"


def test_a_familys_variants_are_one_search_chosen_by_proxy_score_and_on_f():
    sgd = _result([0.1, 0.3], [2.0, 1.0], [4.0, 3.0], [6.0, 6.5])
    adam = _result([0.1, 0.3], [0.5, 3.0], [9.0, 1.0], [9.0, 5.0])
    joined = hindsight.families({"ft": sgd, "ft-adam": adam, "ga": sgd})
    assert joined["ga"] is sgd  # a family of one method is kept as it is
    assert joined["ft"]["forget"]["grid"] == [
        ["ft", 0.1],
        ["ft", 0.3],
        ["ft-adam", 0.1],
        ["ft-adam", 0.3],
    ]
    # the proxy's choice: the variant holding the best proxy score (Adam's 0.5) ...
    assert hindsight.choice(joined["ft"], "proxy") == {
        "value": ["ft-adam", 0.1],
        "gap": 9.0,
        "klom": 9.0,
    }
    # ... the best on F: over both variants, by score (gap + klom) or by forget KLOM alone
    assert hindsight.choice(joined["ft"], "forget")["value"] == ["ft-adam", 0.3]  # 1 + 5
    assert hindsight.choice(sgd, "forget", "klom")["value"] == 0.1  # 6.0 < 6.5, gap aside


def test_the_dmm_goal_asks_forget_klom_below_every_baseline_and_within_twice_oracle_matching():
    rows = {name: {"gap": 1.0, "klom": 6.0} for name in DMM.baselines}
    rows["om"] = {"gap": 9.0, "klom": 3.0}
    rows["dmm"] = {"gap": 20.0, "klom": 5.9}  # the gap is not part of this goal
    rows["dmm_ekfac"] = {"gap": 0.5, "klom": 6.0}  # ties a baseline: no win
    assert DMM.met(rows) == {"dmm": True, "dmm_ekfac": False}
    rows["om"]["klom"] = 2.9  # 5.9 > 2 x 2.9
    assert DMM.met(rows) == {"dmm": False, "dmm_ekfac": False}
    del rows["om"]
    assert DMM.met(rows) == {}  # without Oracle Matching there is nothing to check
