"""Collect ``experiments/lds.py`` results of one workspace into one JSON record and a table.

Reads ``<workspace>/results/lds-<name>.json`` for each score name given (all against the same
ground truth, or nothing is written) and writes them with the commands that made them and the
time score.py took (scores made before score.py was timed show "-"), and the members' test
accuracy and parameter count as train.py recorded them. A record whose scores were replaced
since (``scores/<name>.npy`` no longer has the sha256 it recorded) is refused, naming the lds.py
command to recompute it with:

    python -m experiments.lds_table runs/mnist1d_cnn --scores trak if_ekfac if_ekfac-head \\
        --output results/lds-cnn.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from benchmarks.record import command_line, environment, markdown_table
from experiments.lds import scored_members
from tda.atomic import file_digest, write_json

HEADER = ["scores", "attributor", "members", "LDS [95% CI]", "noise ceiling", "scoring (s)"]


def collect(workspace: Path, names: list[str]) -> dict[str, dict]:
    """The LDS records of ``names``, in order.

    Raises:
        FileNotFoundError: a name has no record (every missing one is named).
        ValueError: the records were measured against different ground truths, or a record
            evaluated scores since replaced (:func:`stale`).
    """
    paths = {name: workspace / "results" / f"lds-{name}.json" for name in names}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"no LDS results for {missing} in {workspace / 'results'}")
    records = {name: json.loads(path.read_text()) for name, path in paths.items()}
    truths = {json.dumps(r["ground_truth"], sort_keys=True) for r in records.values()}
    if len(truths) > 1:
        raise ValueError(f"the records use different ground truths: {sorted(truths)}")
    replaced = stale(workspace, records)
    if replaced:
        raise ValueError("; ".join(_stale(name, paths[name], records[name]) for name in replaced))
    return records


def stale(workspace: Path, records: dict[str, dict]) -> list[str]:
    """The names whose record evaluated other scores than ``<workspace>/scores/<name>.npy``
    holds now (by the sha256 score.py recorded); scores no longer there, or recorded before
    their sha256 was, cannot be compared and are not named."""
    replaced = []
    for name, record in records.items():
        recorded = record["scores_made_with"].get("sha256")
        path = workspace / "scores" / f"{name}.npy"
        if recorded is not None and path.is_file() and file_digest(path) != recorded:
            replaced.append(name)
    return replaced


def _stale(name: str, path: Path, record: dict) -> str:
    """Why the LDS record of ``name`` (at ``path``) is stale, and the lds.py command that made
    it, to recompute it with."""
    command = record.get("command")
    again = " ".join(["python", *command[1:]]) if command else "python experiments/lds.py ..."
    return (
        f"{path} holds the LDS of scores since replaced (their sha256 differs from the one it "
        f"recorded): recompute it with `{again}` or leave {name!r} out"
    )


def members(workspace: Path, records: dict[str, dict]) -> dict[str, dict]:
    """train.py's record (test accuracy, parameter count) of each member the scores were made
    with, by seed; members without one (trained before train.py recorded them) are left out."""
    named = (
        re.match(r"seed-(\d+)\.", checkpoint)
        for record in records.values()
        for checkpoint in record["scores_made_with"].get("checkpoints", [])
    )
    seeds = sorted({int(match.group(1)) for match in named if match})
    paths = {seed: workspace / "results" / f"train-seed-{seed}.json" for seed in seeds}
    return {str(s): json.loads(path.read_text()) for s, path in paths.items() if path.exists()}


def describe_attributor(config: dict) -> str:
    """``Name (Solver, option=value, parameters...)`` from an attributor's Hydra config."""
    details = []
    solver = config.get("solver")
    if solver:
        details.append(solver["_target_"].rsplit(".", 1)[-1])
        details += [f"{key}={value}" for key, value in solver.items() if key != "_target_"]
    parameters = config.get("parameters") or []
    if isinstance(parameters, dict):  # a rule of the model, e.g. kronecker_parameters
        parameters = [f"parameters={parameters['_target_'].rsplit('.', 1)[-1]}"]
    details += parameters
    name = config["_target_"].rsplit(".", 1)[-1]
    return f"{name} ({', '.join(details)})" if details else name


def row(name: str, record: dict) -> list[str]:
    made, lds = record["scores_made_with"], record["lds"]
    attributor = describe_attributor(made["attributor"])
    ceiling = record["noise_ceiling"]
    return [
        name,
        attributor,
        member_count(made),
        f"{lds['mean']:.3f} [{lds['ci_low']:.3f}, {lds['ci_high']:.3f}]",
        f"{ceiling['mean']:.3f}" if ceiling else "-",
        _seconds(made),
    ]


def member_count(made: dict) -> str:
    """How many models the scores average over (:func:`experiments.lds.scored_members`)."""
    members = scored_members(made)
    return str(len(members)) if members else "-"


def _seconds(made: dict) -> str:
    """score.py's run time and threads; "-" for scores recorded before it was timed."""
    if "seconds" not in made:
        return "-"
    threads = made["threads"]
    return f"{made['seconds']:.1f} ({threads} thread{'' if threads == 1 else 's'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--scores", nargs="+", required=True, help="score names (lds-<name>.json)")
    parser.add_argument(
        "--output", type=Path, help="where the JSON record goes (default: print the tables only)"
    )
    args = parser.parse_args()
    records = collect(args.workspace, args.scores)
    table = markdown_table(HEADER, [row(name, record) for name, record in records.items()])
    print(table)
    output = {
        "command": command_line(),
        "workspace": str(args.workspace),
        "ground_truth": next(iter(records.values()))["ground_truth"],
        "table": table,
        "members": members(args.workspace, records),
        "runs": {
            name: {key: value for key, value in record.items() if key != "settings"}
            | {"run_command": record["command"]}
            for name, record in records.items()
        },
        **environment(threads=1),
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, output)


if __name__ == "__main__":
    main()
