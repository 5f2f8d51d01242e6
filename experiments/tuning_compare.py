"""Compare two tuning rules: the same methods, forget sets, originals and oracles, tuned twice.

Reads two table records written by ``experiments.dmm_table`` or ``experiments.unlearn_table``
(``runs[forget][method]``), one per rule, and tabulates, for every method in both, the value each
rule chose and the forget-set KLOM P95 and average gap it gave:

    python -m experiments.tuning_compare --before results/dmm-gap-rule.json \\
        --after results/dmm.json --output results/tuning-criterion-mlp.json

``--match class3=class`` compares the ``after`` record's forget set ``class3`` (e.g. a run saved
under another name) with the ``before`` record's ``class``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.record import command_line, markdown_table
from experiments.unlearn_table import setting_text
from tda.atomic import write_json

HEADER = ["method", "forget set", "value", "KLOM F", "avg gap"]


def _rule(record: dict) -> str:
    """``criterion, N models[, K proxies]`` of one result (results made before criteria existed:
    ``gap``)."""
    tuning = record["settings"]["tuning"]
    proxies = tuning.get("proxies", 1)
    several = f", {proxies} proxies" if proxies > 1 else ""
    return f"{tuning.get('criterion', 'gap')}, {tuning['models']} models{several}"


def _change(before: float, after: float, digits: int = 2) -> str:
    return f"{before:.{digits}f} → {after:.{digits}f}"


def compare(
    before: dict, after: dict, match: dict[str, str] | None = None
) -> tuple[list[list[str]], dict]:
    """Rows for every tuned method present in both records, and their rules; ``match`` maps an
    ``after`` forget set to the ``before`` one it is compared with (default: the same name)."""
    rows, rules = [], {}
    for forget, methods in after["runs"].items():
        counterpart = (match or {}).get(forget, forget)
        for method, new in methods.items():
            old = before["runs"].get(counterpart, {}).get(method)
            if old is None or not new.get("tuning"):
                continue
            rules[method] = {"before": _rule(old), "after": _rule(new)}
            rows.append(
                [
                    method,
                    forget,
                    f"{setting_text(old['used'])} → {setting_text(new['used'])}",
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
    parser.add_argument("--match", nargs="*", default=[], help="AFTER=BEFORE forget-set names")
    args = parser.parse_args()
    before, after = (json.loads(path.read_text()) for path in (args.before, args.after))
    match = dict(pair.split("=", 1) for pair in args.match)
    rows, rules = compare(before, after, match)
    if not rows:
        raise ValueError(f"{args.before} and {args.after} share no tuned result")
    table = markdown_table(HEADER, rows)
    print(table)
    record = {"command": command_line(), "before": str(args.before), "after": str(args.after)}
    record |= {"rules": rules, "table": table}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, record)


if __name__ == "__main__":
    main()
