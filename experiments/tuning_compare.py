"""Compare two tuning rules: the same methods, forget sets, originals and oracles, tuned twice.

Reads two table records written by ``experiments.dmm_table`` or ``experiments.unlearn_table``
(``runs[forget][method]``), one per rule, and tabulates, for every method in both, the value each
rule chose and the forget-set KLOM P95 and average gap it gave:

    python -m experiments.tuning_compare --before results/dmm-gap-rule.json \\
        --after results/dmm.json --output results/tuning-criterion-mlp.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.record import command_line, markdown_table

HEADER = ["method", "forget set", "value", "KLOM F", "avg gap"]


def _rule(record: dict) -> str:
    """``criterion, N models`` of one result (results made before criteria existed: ``gap``)."""
    tuning = record["settings"]["tuning"]
    return f"{tuning.get('criterion', 'gap')}, {tuning['models']} models"


def _change(before: float, after: float, digits: int = 2) -> str:
    return f"{before:.{digits}f} → {after:.{digits}f}"


def compare(before: dict, after: dict) -> tuple[list[list[str]], dict]:
    """Rows for every tuned method present in both records, and their rules."""
    rows, rules = [], {}
    for forget, methods in after["runs"].items():
        for method, new in methods.items():
            old = before["runs"].get(forget, {}).get(method)
            if old is None or not new.get("tuning"):
                continue
            rules[method] = {"before": _rule(old), "after": _rule(new)}
            rows.append(
                [
                    method,
                    forget,
                    f"{old['used']:g} → {new['used']:g}",
                    _change(old["klom"]["forget"], new["klom"]["forget"]),
                    _change(old["average_gap"], new["average_gap"]),
                ]
            )
    return rows, rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    before, after = (json.loads(path.read_text()) for path in (args.before, args.after))
    rows, rules = compare(before, after)
    if not rows:
        raise ValueError(f"{args.before} and {args.after} share no tuned result")
    table = markdown_table(HEADER, rows)
    print(table)
    record = {"command": command_line(), "before": str(args.before), "after": str(args.after)}
    record |= {"rules": rules, "table": table}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
