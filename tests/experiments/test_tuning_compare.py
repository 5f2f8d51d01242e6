"""experiments/tuning_compare.py: the same methods tuned by two rules, side by side."""

from experiments.tuning_compare import compare


def _record(used, klom, gap, tuning):
    return {"used": used, "klom": {"forget": klom}, "average_gap": gap,
            "tuning": {"chosen": used} if tuning else None,
            "settings": {"tuning": tuning or {"models": 20}}}  # fmt: skip


def test_every_tuned_method_in_both_records_is_compared():
    old_rule, new_rule = {"models": 3}, {"models": 20, "criterion": "gap+klom"}
    before = {"runs": {"class": {"ft": _record(0.01, 9.5, 2.0, old_rule)}}}
    after = {"runs": {"class": {
        "ft": _record(0.03, 8.25, 3.5, new_rule),
        "salun": _record(0.1, 7.0, 1.0, new_rule),    # not in `before`: left out
        "retrain": _record(None, 5.0, 0.1, None),     # not tuned: left out
    }}}  # fmt: skip
    rows, rules = compare(before, after)
    assert rows == [["ft", "class", "0.01 → 0.03", "9.50 → 8.25", "2.00 → 3.50"]]
    assert rules == {"ft": {"before": "gap, 3 models", "after": "gap+klom, 20 models"}}


def test_forget_sets_saved_under_other_names_are_matched():
    rule = {"models": 20, "criterion": "gap+klom"}
    before = {"runs": {"class": {"ft": _record(0.01, 9.5, 2.0, rule)}}}
    after = {"runs": {"class3": {"ft": _record(0.1, 9.0, 1.0, {**rule, "proxies": 3})}}}
    assert compare(before, after) == ([], {})
    rows, rules = compare(before, after, {"class3": "class"})
    assert rows == [["ft", "class3", "0.01 → 0.1", "9.50 → 9.00", "2.00 → 1.00"]]
    assert rules["ft"]["after"] == "gap+klom, 20 models, 3 proxies"
