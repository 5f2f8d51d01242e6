"""experiments/variant_table.py: variants of a method chosen on their joined proxy searches."""

import json

import pytest

from experiments.variant_table import choose, collect, dmm_goals, mean_over_draws
from unlearn.tuning import Selection, relative_sum

UNTOUCHED = {"gap": 4.0, "klom": 8.0}


def _record(gaps, kloms, used, untouched=UNTOUCHED, seeds=(0, 1)):
    grid = [0.01, 0.1][: len(gaps)]
    scores = relative_sum(gaps, kloms, untouched)
    metrics = [{"UA": g, "RA": 0.0, "TA": 0.0, "MIA": 0.0} for g in gaps]
    oracle = {"UA": 1.0, "RA": 2.0, "TA": 3.0, "MIA": 4.0}
    ranked = min(range(len(grid)), key=lambda i: scores[i])
    tuning = Selection("lr", grid, scores, metrics, oracle, grid[ranked], "gap+klom", gaps, kloms,
                       untouched).to_dict()  # fmt: skip
    return {"status": "ok", "tuning": tuning, "used": used, "average_gap": 2 * used,
            "klom": {"forget": 10 * used}, "time_fraction": {"mean": 0.05},
            "forget_size": 40, "seeds": list(seeds), "oracle_seeds": [1000]}  # fmt: skip


def test_the_variant_with_the_best_proxy_score_is_chosen_with_its_run():
    sgd = _record([2.0, 1.0], [8.0, 8.0], used=0.1)  # scores 1.5, 1.25
    adam = _record([0.5, 3.0], [4.0, 8.0], used=0.01)  # scores 0.625, 1.75
    choice = choose({"sgd": sgd, "adam": adam})
    assert (choice["variant"], choice["value"], choice["fallback"]) == ("adam", 0.01, False)
    assert choice["best_scores"] == pytest.approx({"sgd": 1.25, "adam": 0.625})
    assert choice["chosen_by_variant"] == {"sgd": 0.1, "adam": 0.01}
    assert choice["klom"] == {"forget": 0.1} and choice["average_gap"] == 0.02
    # the chosen value diverged on F and its run used the next one: shown, not hidden
    assert choose({"sgd": sgd, "adam": {**adam, "used": 0.1}})["fallback"]


def test_variants_of_other_originals_or_proxies_are_refused():
    sgd = _record([2.0], [8.0], used=0.01)
    with pytest.raises(ValueError, match="differ in seeds"):
        choose({"sgd": sgd, "adam": _record([1.0], [8.0], used=0.01, seeds=(5,))})
    other_proxy = _record([1.0], [8.0], used=0.01, untouched={"gap": 2.0, "klom": 8.0})
    with pytest.raises(ValueError, match="scored on other proxies"):
        choose({"sgd": sgd, "adam": other_proxy})


def test_methods_lacking_a_variant_are_refused_or_left_out(tmp_path):
    (tmp_path / "results").mkdir()
    for name, record in {"ft": _record([1.0], [8.0], 0.01), "ft-adam": _record([0.5], [4.0], 0.01),
                         "rl": _record([1.0], [8.0], 0.01)}.items():  # fmt: skip
        (tmp_path / "results" / f"unlearn-{name}-class.json").write_text(json.dumps(record))
    groups = {"ft": {"sgd": "", "adam": "-adam"}, "rl": {"sgd": "", "adam": "-adam"}}
    with pytest.raises(FileNotFoundError, match="unlearn-rl-adam-class.json does not exist"):
        collect(tmp_path, "class", groups, allow_missing=False)
    choices, missing = collect(tmp_path, "class", groups, allow_missing=True)
    assert list(choices) == ["ft"] and choices["ft"]["variant"] == "adam" and missing == ["rl"]


def test_the_dmm_goal_is_checked_on_the_chosen_variants():
    def chosen(klom):
        return {"klom": {"forget": klom}, "time_fraction": 0.05}

    choices = {"ft": chosen(6.0), "ga": chosen(8.0), "dmm-trak-m20": chosen(7.0),
               "dmm-oracle": chosen(5.0)}  # fmt: skip
    goal = dmm_goals(choices)["dmm-trak-m20"]
    assert goal["beats"] == {"ft": False, "ga": True} and goal["within_2x_of_oracle_matching"]
    assert list(dmm_goals(choices)) == ["dmm-trak-m20"]


def test_means_over_draws_keep_each_draws_own_choice():
    def chosen(variant, klom, gap):
        return {"variant": variant, "klom": {"forget": klom}, "average_gap": gap,
                "time_fraction": 0.1}  # fmt: skip

    draws = {"a": {"ft": chosen("sgd", 6.0, 2.0), "ga": chosen("adam", 5.0, 1.0)},
             "b": {"ft": chosen("adam", 8.0, 4.0)}}  # fmt: skip
    means = mean_over_draws(draws)
    assert list(means) == ["ft"] and means["ft"]["variants"] == ["sgd", "adam"]
    assert means["ft"]["klom"]["forget"] == 7.0 and means["ft"]["average_gap"] == 3.0
