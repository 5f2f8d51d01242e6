"""Collect ``experiments/unlearning.py`` results into one JSON record and a Markdown table.

Reads ``<workspace>/results/unlearn-<method>-<forget>.json`` for each method and forget set given,
writes them (and the commands that made them) to ``--output`` and prints one table per forget set:

    python -m experiments.unlearn_table runs/mnist1d_mlp --forget random_10pct class \\
        --output results/unlearning-mlp.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.record import command_line, environment, markdown_table

METHODS = ("retrain", "ft", "ga", "rl", "graddiff", "salun", "l1_sparse", "prune_then_unlearn")
HEADER = ["method", "UA", "RA", "TA", "MIA", "avg gap", "KLOM F", "KLOM R", "KLOM V", "time/RT"]


def _cell(summary: dict) -> str:
    half = summary["ci95"]
    return f"{summary['mean']:.1f} ± {half:.1f}" if half is not None else f"{summary['mean']:.1f}"


def row(method: str, record: dict) -> list[str]:
    """One table row: metric means ± 95% CI, gap of the means, KLOM P95, time / retraining."""
    if record["status"] != "ok":
        return [method, *[record["status"]] * (len(HEADER) - 1)]
    klom = record["klom"]
    return [
        method,
        *(_cell(record["metrics"][key]) for key in ("UA", "RA", "TA", "MIA")),
        f"{record['average_gap']:.2f}",
        *(f"{klom[name]:.2f}" for name in ("forget", "retain", "validation")),
        f"{record['time_fraction']['mean']:.3f}",
    ]


def reference_rows(record: dict) -> list[list[str]]:
    """The untouched originals, the oracles and the oracle-vs-oracle KLOM floor."""
    klom, original = record["klom"], record["original"]
    oracle = [_cell(record["oracle_metrics"][key]) for key in ("UA", "RA", "TA", "MIA")]
    floors = [klom.get(f"{name}_floor") for name in ("forget", "retain", "validation")]
    floor_cells = [f"{value:.2f}" if value is not None else "-" for value in floors]
    return [
        [
            "original (no unlearning)",
            *(_cell(original["metrics"][key]) for key in ("UA", "RA", "TA", "MIA")),
            f"{original['average_gap']:.2f}",
            *(f"{original['klom'][name]:.2f}" for name in ("forget", "retain", "validation")),
            "0",
        ],
        ["oracle (N retrained)", *oracle, "0", "-", "-", "-", "1"],
        ["oracle vs oracle (floor)", "-", "-", "-", "-", "-", *floor_cells, "-"],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--forget", nargs="+", default=["random_10pct"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    tables, records = {}, {}
    for forget in args.forget:
        found = {
            method: json.loads(path.read_text())
            for method in args.methods
            if (path := args.workspace / "results" / f"unlearn-{method}-{forget}.json").is_file()
        }
        if not found:
            raise FileNotFoundError(f"no results for forget set {forget!r} in {args.workspace}")
        rows = [row(method, record) for method, record in found.items()]
        complete = next(record for record in found.values() if record["status"] == "ok")
        tables[forget] = markdown_table(HEADER, rows + reference_rows(complete))
        records[forget] = found
        print(f"\n{forget}\n{tables[forget]}")
    threads = next(iter(next(iter(records.values())).values()))["settings"]["threads"]
    output = {"command": command_line(), **environment(threads), "tables": tables}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({**output, "runs": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
