"""DMM against the baselines over several draws of one forget-set kind (mean over draws).

KLOM P95 over the forget points of a single small draw (random 1% = 40 points: the P95 is about
the second largest value) moves a lot from draw to draw. This collects the
``experiments/unlearning.py`` results of the same methods on further draws of the forget set
(``+forget.seed=<s>``, results named ``unlearn-<method>-<forget>-seed<s>.json``; draw 0 is the
benchmark's own ``unlearn-<method>-<forget>.json``) and reports each method's mean forget-set
KLOM, average gap and time over the draws, with the issue's goal checked on the means:

    python -m experiments.dmm_draws runs/mnist1d_mlp --forget random_1pct --seeds 0 10 20 \\
        --output results/dmm-random_1pct-draws.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.record import command_line, environment, markdown_table
from experiments.dmm_table import BASELINES, DMM, GOAL_BASELINES, below
from experiments.run_records import read_run
from tda.atomic import write_json

METHODS = (DMM, "dmm-oracle", *BASELINES)


def run_name(method: str, forget: str, seed: int) -> str:
    """The run of ``method`` on draw ``seed`` of ``forget`` (0: the benchmark's own draw)."""
    suffix = "" if seed == 0 else f"-seed{seed}"
    return f"unlearn-{method}-{forget}{suffix}"


def collect(workspace: Path, forget: str, seeds: list[int]) -> dict[str, list[dict]]:
    """``{method: [record per draw]}``; every method must have a finished result on every draw.

    Raises:
        FileNotFoundError: a missing result. ValueError: a result that did not finish, or draws
            whose results were measured on other originals than the first draw's.
    """
    found: dict[str, list[dict]] = {}
    for method in METHODS:
        found[method] = []
        for seed in seeds:
            found[method].append(read_run(workspace, run_name(method, forget, seed), finished=True))
    first = found[DMM][0]["seeds"]
    stray = [m for m, records in found.items() if any(r["seeds"] != first for r in records)]
    if stray:
        raise ValueError(f"{stray} were measured on other originals than {first}")
    return found


def summary(found: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: per-draw and mean forget KLOM, average gap and time fraction."""
    table = {}
    for method, records in found.items():
        klom = [r["klom"]["forget"] for r in records]
        gap = [r["average_gap"] for r in records]
        time = [r["time_fraction"]["mean"] for r in records]
        table[method] = {
            "klom_forget": klom,
            "klom_forget_mean": float(np.mean(klom)),
            "average_gap_mean": float(np.mean(gap)),
            "time_fraction_mean": float(np.mean(time)),
        }
    floors = [r["klom"]["forget_floor"] for r in found[DMM]]
    table["oracle vs oracle (floor)"] = {"klom_forget": floors, "klom_forget_mean": np.mean(floors)}
    return table


def goal(table: dict[str, dict]) -> dict:
    """The issue's goal on the means over draws."""
    dmm = table[DMM]["klom_forget_mean"]
    return {
        "dmm_klom_forget_mean": dmm,
        "beats": {name: below(dmm, table[name]["klom_forget_mean"]) for name in GOAL_BASELINES},
        "within_2x_of_oracle_matching": dmm <= 2 * table["dmm-oracle"]["klom_forget_mean"],
        "time_fraction_mean": table[DMM]["time_fraction_mean"],
    }


def markdown(table: dict[str, dict], seeds: list[int]) -> str:
    header = ["method", *(f"KLOM F draw {s}" for s in seeds), "mean KLOM F", "mean gap"]
    rows = []
    for method, entry in table.items():
        cells = [f"{value:.2f}" for value in entry["klom_forget"]]
        gap = entry.get("average_gap_mean")
        rows.append([method, *cells, f"{entry['klom_forget_mean']:.2f}",
                     "-" if gap is None else f"{gap:.2f}"])  # fmt: skip
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--forget", default="random_1pct")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 10, 20])
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    found = collect(args.workspace, args.forget, args.seeds)
    table = summary(found)
    text = markdown(table, args.seeds)
    print(f"{args.forget}, draws {args.seeds}\n{text}\n{goal(table)}")
    threads = found[DMM][0]["settings"]["threads"]
    record = {
        "command": command_line(),
        **environment(threads),
        "forget": args.forget,
        "seeds": args.seeds,
        "table": text,
        "summary": table,
        "goal": goal(table),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, record, default=float)


if __name__ == "__main__":
    main()
