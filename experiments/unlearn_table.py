"""Collect ``experiments/unlearning.py`` results into one JSON record and a Markdown table.

Reads ``<workspace>/results/unlearn-<method>-<forget>.json`` for each method and forget set given,
writes them (and the commands that made them) to ``--output`` and prints one table per forget set.
Rows are labelled as the README's tables spell the methods (:func:`display_name`: ``SalUn`` for
``salun``); the record's ``runs`` stay keyed by result name (``salun``), which other scripts read.
Every requested method must have a result for every forget set, measured on the same originals and
oracles, or nothing is written (``--allow-missing`` writes what there is, with "no result" rows):

    python -m experiments.unlearn_table runs/mnist1d_mlp --forget random_10pct class \\
        --output results/unlearning-mlp.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.record import command_line, environment, markdown_table
from experiments.run_records import find_run, first_finished
from tda.atomic import write_json

METHODS = ("retrain", "ft", "ga", "rl", "graddiff", "salun", "l1_sparse", "prune_then_unlearn")
HEADER = [
    "method",
    "UA",
    "RA",
    "TA",
    "MIA",
    "avg gap",
    "KLOM F",
    "KLOM R",
    "KLOM V",
    "time/RT",
    "tuned",
]
# What every result of one forget set must share to sit in one table.
SHARED = ("forget_size", "seeds", "oracle_seeds")
# How the README's tables spell each unlearner, by its config name (conf/unlearner/).
DISPLAY_NAMES = {
    "retrain": "retrain",
    "ft": "FT",
    "ga": "GA",
    "rl": "RL",
    "graddiff": "GradDiff",
    "salun": "SalUn",
    "l1_sparse": "ℓ1-sparse",
    "prune_then_unlearn": "prune → unlearn",
    "npo": "NPO",
    "wagle": "WAGLE (GradDiff)",
    "wagle_npo": "WAGLE (NPO)",
    "dmm": "DMM",
}


def display_name(method: str) -> str:
    """The README's name for the result ``method`` (a config name, or ``<config name>-<variant>``
    for a variant run): ``salun`` -> ``SalUn``, ``salun-mixed`` -> ``SalUn (mixed)``,
    ``wagle_npo-joint`` -> ``WAGLE (NPO, joint)``; a name of no known method is kept as it is."""
    base, _, variant = method.partition("-")
    name = DISPLAY_NAMES.get(base)
    if name is None:
        return method
    if not variant:
        return name
    return f"{name[:-1]}, {variant})" if name.endswith(")") else f"{name} ({variant})"


def _cell(summary: dict) -> str:
    half = summary["ci95"]
    return f"{summary['mean']:.1f} ± {half:.1f}" if half is not None else f"{summary['mean']:.1f}"


def klom_cell(klom: dict, name: str) -> str:
    """KLOM P95 of one point set and, where recorded, its 95% bootstrap interval over points."""
    interval = klom.get(f"{name}_ci95")
    value = f"{klom[name]:.2f}"
    return value if interval is None else f"{value} ({interval[0]:.2f}-{interval[1]:.2f})"


def setting_text(value) -> str:
    """A searched value as text: ``0.01``, or ``0.01 / 0.5`` for a search over several keys
    (a value that is no number, such as DMM's ``matching``, as it is: ``exact / 0.001``)."""
    if isinstance(value, list):
        return " / ".join(setting_text(setting) for setting in value)
    return value if isinstance(value, str) else f"{value:g}"


def tuned(record: dict) -> str:
    """The value used and the grid's ends, e.g. ``0.1 [0.01, 0.3] (edge)``; for a search over
    several keys, each key's setting and ends, e.g. ``0.01 / 0.5 [0.0001, 0.1] / [0.1, 0.9]``.

    ``edge``: a numeric setting is an end of its key's values; ``fallback``: the proxy's choice
    diverged on F and the next value of its ranking was used; ``none of``: every value diverged.
    """
    tuning = record.get("tuning")
    if not tuning:
        return "-"
    grid, value = tuning["grid"], record.get("used")
    several = isinstance(grid[0], list)
    axes = [list(dict.fromkeys(axis)) for axis in zip(*grid, strict=True)] if several else [grid]
    ends = " / ".join(f"[{setting_text(axis[0])}, {setting_text(axis[-1])}]" for axis in axes)
    if value is None:
        return f"none of {ends}"
    settings = value if isinstance(value, list) else [value]
    edge = any(  # an end of a numeric axis only: a choice among names has no edge
        not isinstance(s, str) and s in (axis[0], axis[-1])
        for s, axis in zip(settings, axes, strict=True)
    )
    fallback = " (fallback)" if value != tuning["chosen"] else ""
    return f"{setting_text(value)} {ends}{' (edge)' if edge else ''}{fallback}"


def row(method: str, record: dict) -> list[str]:
    """One table row: metric means ± 95% CI, gap of the means, KLOM P95 (95% CI over points),
    time / RT, tuned value."""
    if record["status"] != "ok":
        return [method, *[record["status"]] * (len(HEADER) - 2), tuned(record)]
    klom = record["klom"]
    return [
        method,
        *(_cell(record["metrics"][key]) for key in ("UA", "RA", "TA", "MIA")),
        f"{record['average_gap']:.2f}",
        *(klom_cell(klom, name) for name in ("forget", "retain", "validation")),
        f"{record['time_fraction']['mean']:.3f}",
        tuned(record),
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
            *(klom_cell(original["klom"], name) for name in ("forget", "retain", "validation")),
            "0",
            "-",
        ],
        ["oracle (N retrained)", *oracle, "0", "-", "-", "-", "1", "-"],
        ["oracle vs oracle (floor)", "-", "-", "-", "-", "-", *floor_cells, "-", "-"],
    ]


def method_rows(found: dict[str, dict], methods: list[str]) -> list[list[str]]:
    """One :func:`row` per method, labelled by its :func:`display_name`; "no result" cells for a
    method without a result (``--allow-missing``)."""
    return [
        row(display_name(method), found[method])
        if method in found
        else [display_name(method), *["no result"] * (len(HEADER) - 1)]
        for method in methods
    ]


def collect(workspace: Path, forget: str, methods: list[str], allow_missing: bool) -> dict:
    """``{method: record}`` of one forget set, checked complete and comparable.

    Raises:
        FileNotFoundError: no result at all, or (unless ``allow_missing``) a method without one.
        ValueError: results measured on different originals, oracles or forget-set sizes.
    """
    found = {m: record for m in methods if (record := find_run(workspace, f"unlearn-{m}-{forget}"))}
    missing = [method for method in methods if method not in found]
    if not found or (missing and not allow_missing):
        raise FileNotFoundError(
            f"no results for forget set {forget!r} in {workspace}: {missing}; name the methods "
            "that ran with --methods, or list the others as 'no result' with --allow-missing"
        )
    first_method, first = next(iter(found.items()))
    for method, record in found.items():
        for key in SHARED:
            if record[key] != first[key]:
                raise ValueError(
                    f"{forget}: {method} and {first_method} differ in {key} "
                    f"({record[key]} vs {first[key]}); rerun one of them"
                )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--forget", nargs="+", default=["random_10pct"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--output", type=Path, help="where the JSON record goes (default: print the tables only)"
    )
    parser.add_argument("--allow-missing", action="store_true", help="tabulate partial results")
    args = parser.parse_args()
    tables, records = {}, {}
    for forget in args.forget:
        found = collect(args.workspace, forget, args.methods, args.allow_missing)
        complete = first_finished(found, forget)
        rows = method_rows(found, args.methods) + reference_rows(complete)
        tables[forget] = markdown_table(HEADER, rows)
        records[forget] = found
        print(f"\n{forget}\n{tables[forget]}")
    threads = next(iter(next(iter(records.values())).values()))["settings"]["threads"]
    output = {"command": command_line(), **environment(threads), "tables": tables}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, {**output, "runs": records})


if __name__ == "__main__":
    main()
