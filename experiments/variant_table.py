"""Choose between variants of each method on the proxy, as one search over all their values.

Each variant of a method (e.g. its reference optimiser and Adam) is its own
``experiments/unlearning.py`` run, ``unlearn-<method><suffix>-<forget>.json``, tuned on the same
proxy forget sets against the same proxy oracles. Their searches are joined
(:func:`unlearn.tuning.join_selections`) and the variant holding the best proxy score is the
method's choice; nothing measured on F enters it. Prints and writes, per forget set, each
variant's best proxy score and value, the choice, and the chosen run's average gap and KLOM:

    python -m experiments.variant_table runs/mnist1d_mlp --forget random_1pct random_10pct class \\
        --methods ft ga rl --variants sgd= adam=-adam \\
        --methods dmm-trak-m20 --variants adam= sgd=-sgd --output results/optimizer-choice-mlp.json

(each ``--methods`` group takes the ``--variants`` given after it; with ``--allow-missing`` a
method lacking a variant's result on a forget set is left out of that set's table and listed).
``--draws`` reads the forget sets as draws of one kind (e.g. ``random_1pct3 random_1pct3-seed10``)
and adds each method's means over them, with the DMM goal checked on the means.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.record import command_line, markdown_table
from experiments.dmm_table import goal_check
from experiments.run_records import read_run
from experiments.unlearn_table import SHARED, klom_cell, setting_text
from tda.atomic import write_json
from unlearn.tuning import Selection, join_selections

ORACLE_MATCHING = "dmm-oracle"


def choose(records: dict[str, dict]) -> dict:
    """The variant and value the joined search ranks first, and each variant's best score.

    Raises:
        ValueError: variants measured on other originals or oracles, or tuned on other proxies.
    """
    (first_name, first), *others = records.items()
    for name, record in others:
        for key in SHARED:
            if record[key] != first[key]:
                raise ValueError(f"variants {name!r} and {first_name!r} differ in {key}")
    searches = {name: Selection.from_dict(record["tuning"]) for name, record in records.items()}
    variant, value = join_selections(searches).chosen
    best = {
        name: min(score for score in search.scores if score is not None)
        for name, search in searches.items()
    }
    chosen = records[variant]
    return {
        "variant": variant,
        "value": value,
        "used": chosen["used"],
        "fallback": chosen["used"] != value,
        "best_scores": best,
        "chosen_by_variant": {name: search.chosen for name, search in searches.items()},
        "average_gap": chosen["average_gap"],
        "klom": chosen["klom"],
        "time_fraction": chosen["time_fraction"]["mean"],
        "runs": {name: _provenance(record) for name, record in records.items()},
    }


def _provenance(record: dict) -> dict:
    """What made one variant's result: command, overrides, seeds, versions, settings, tuning."""
    keys = ("command", "overrides", "seeds", "oracle_seeds", "versions", "settings", "tuning")
    return {key: record.get(key) for key in keys}


def collect(
    workspace: Path, forget: str, groups: dict[str, dict[str, str]], allow_missing: bool
) -> tuple[dict[str, dict], list[str]]:
    """Each method's :func:`choose` on one forget set, and the methods left out for lack of a
    variant's result (``allow_missing``; otherwise that raises ``FileNotFoundError``)."""
    choices, missing = {}, []
    for method, variants in groups.items():
        try:
            records = {
                name: read_run(
                    workspace, f"unlearn-{method}{suffix}-{forget}", finished=True, tuned=True
                )
                for name, suffix in variants.items()
            }
        except FileNotFoundError:
            if not allow_missing:
                raise
            missing.append(method)
            continue
        choices[method] = choose(records)
    return choices, missing


def dmm_goals(choices: dict[str, dict]) -> dict[str, dict]:
    """The DMM goal (:func:`experiments.dmm_table.goal_check`) on one forget set's chosen
    variants, for each DMM result among them (every ``dmm-*`` but Oracle Matching)."""
    found = {
        method: {"status": "ok", "klom": c["klom"], "time_fraction": {"mean": c["time_fraction"]}}
        for method, c in choices.items()
    }
    names = [name for name in found if name.startswith("dmm-") and name != ORACLE_MATCHING]
    return {name: goal_check(found, dmm_name=name) for name in names}


def mean_over_draws(choices: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Each method's chosen forget KLOM, average gap and time, averaged over the forget sets
    (draws of one kind); only methods chosen on every draw."""
    draws = list(choices.values())
    methods = [method for method in draws[0] if all(method in draw for draw in draws)]

    def mean(method: str, read) -> float:
        return float(np.mean([read(draw[method]) for draw in draws]))

    return {
        method: {
            "klom": {"forget": mean(method, lambda c: c["klom"]["forget"])},
            "average_gap": mean(method, lambda c: c["average_gap"]),
            "time_fraction": mean(method, lambda c: c["time_fraction"]),
            "variants": [draw[method]["variant"] for draw in draws],
        }
        for method in methods
    }


HEADER = ["method", "best proxy score (value) per variant", "chosen", "avg gap"]
HEADER += ["KLOM F", "KLOM R", "KLOM V", "time/RT"]


def row(method: str, choice: dict) -> list[str]:
    scores = ", ".join(
        f"{name} {score:.3f} ({setting_text(choice['chosen_by_variant'][name])})"
        for name, score in choice["best_scores"].items()
    )
    fallback = " (fallback)" if choice["fallback"] else ""
    return [
        method,
        scores,
        f"{choice['variant']}, {setting_text(choice['used'])}{fallback}",
        f"{choice['average_gap']:.2f}",
        *(klom_cell(choice["klom"], name) for name in ("forget", "retain", "validation")),
        f"{choice['time_fraction']:.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--forget", nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", action="append", required=True)
    parser.add_argument(
        "--variants", nargs="+", action="append", required=True, help="NAME=SUFFIX ..."
    )
    parser.add_argument(
        "--output", type=Path, help="where the JSON record goes (default: print the tables only)"
    )
    parser.add_argument("--allow-missing", action="store_true", help="skip incomplete methods")
    parser.add_argument("--draws", action="store_true", help="also average over the forget sets")
    args = parser.parse_args()
    if len(args.methods) != len(args.variants):
        parser.error("give one --variants after each --methods")
    groups = {
        method: dict(pair.split("=", 1) for pair in variants)
        for methods, variants in zip(args.methods, args.variants, strict=True)
        for method in methods
    }
    choices, tables, missing, goals = {}, {}, {}, {}
    for forget in args.forget:
        choices[forget], missing[forget] = collect(
            args.workspace, forget, groups, args.allow_missing
        )
        rows = [row(method, choice) for method, choice in choices[forget].items()]
        tables[forget] = markdown_table(HEADER, rows)
        goals[forget] = dmm_goals(choices[forget])
        print(f"\n{forget}\n{tables[forget]}")
        for name, goal in goals[forget].items():
            print(f"DMM goal ({name}): {goal}")
    if args.draws:
        means = mean_over_draws(choices)
        goals["mean over draws"] = dmm_goals(means)
        rows = [
            [
                method,
                ", ".join(m["variants"]),
                f"{m['average_gap']:.2f}",
                f"{m['klom']['forget']:.2f}",
            ]
            for method, m in means.items()
        ]
        tables["mean over draws"] = markdown_table(["method", "chosen", "avg gap", "KLOM F"], rows)
        print(f"\nmean over draws\n{tables['mean over draws']}")
        for name, goal in goals["mean over draws"].items():
            print(f"DMM goal on the means ({name}): {goal}")
    record = {"command": command_line(), "variants": groups, "choices": choices}
    record |= {"missing": missing, "dmm_goal": goals}
    record["tables"] = tables
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, record)


if __name__ == "__main__":
    main()
