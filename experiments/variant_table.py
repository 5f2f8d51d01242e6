"""Choose between variants of each method on the proxy, as one search over all their values.

Each variant of a method (e.g. its reference optimiser and Adam) is its own
``experiments/unlearning.py`` run, ``unlearn-<method><suffix>-<forget>.json``, tuned on the same
proxy forget sets against the same proxy oracles. Their searches are joined
(:func:`unlearn.tuning.join_selections`) and the variant holding the best proxy score is the
method's choice; nothing measured on F enters it. Prints and writes, per forget set, each
variant's best proxy score and value, the choice, and the chosen run's average gap and KLOM:

    python -m experiments.variant_table runs/mnist1d_mlp --forget random_1pct random_10pct class \\
        --methods ft ga rl graddiff salun --variants sgd= adam=-adam \\
        --output results/optimizer-choice-mlp.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.record import command_line, markdown_table
from experiments.unlearn_table import SHARED, klom_cell
from unlearn.tuning import Selection, join_selections


def _load(workspace: Path, method: str, suffix: str, forget: str) -> dict:
    path = workspace / "results" / f"unlearn-{method}{suffix}-{forget}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run that variant first")
    record = json.loads(path.read_text())
    if record["status"] != "ok" or not record.get("tuning"):
        raise ValueError(f"{path}: a finished, tuned result is needed (status {record['status']})")
    return record


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
    }


def row(method: str, choice: dict, variants: list[str]) -> list[str]:
    cells = [
        f"{choice['best_scores'][name]:.3f} ({choice['chosen_by_variant'][name]:g})"
        for name in variants
    ]
    fallback = " (fallback)" if choice["fallback"] else ""
    return [
        method,
        *cells,
        f"{choice['variant']}, {choice['used']:g}{fallback}",
        f"{choice['average_gap']:.2f}",
        *(klom_cell(choice["klom"], name) for name in ("forget", "retain", "validation")),
        f"{choice['time_fraction']:.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--forget", nargs="+", required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--variants", nargs="+", required=True, help="NAME=SUFFIX, e.g. adam=-adam")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    variants = dict(pair.split("=", 1) for pair in args.variants)
    header = ["method", *(f"{name}: best proxy score (value)" for name in variants), "chosen"]
    header += ["avg gap", "KLOM F", "KLOM R", "KLOM V", "time/RT"]
    choices, tables = {}, {}
    for forget in args.forget:
        choices[forget] = {}
        for method in args.methods:
            records = {
                name: _load(args.workspace, method, suffix, forget)
                for name, suffix in variants.items()
            }
            choices[forget][method] = choose(records)
        rows = [row(method, choices[forget][method], list(variants)) for method in args.methods]
        tables[forget] = markdown_table(header, rows)
        print(f"\n{forget}\n{tables[forget]}")
    record = {"command": command_line(), "variants": variants, "choices": choices}
    record["tables"] = tables
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
