"""The demo's unlearning gaps against independent oracles, with a committed record.

`make demo` measures SalUn's and FT's average gap against one oracle: the demo model's exact
retraining on R from its own seed (0), which shares its initial weights and batch order and so is
closer to it than an independent retraining. This script retrains ``--oracles`` more on R from
seeds 1000, 1001, ... and reports each method's gap to each (mean and 95% t-interval), beside the
demo's own-seed gap. Needs the demo's models (run `make demo` first); oracles are cached under
``<workspace>/oracles`` and resume.

    python -m experiments.demo_oracles   # -> results/demo-oracles.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

import tda
import unlearn
from benchmarks.record import REPO_ROOT, write_record
from experiments import demo, demo_unlearning
from tda.timing import warm_up_torch
from unlearn.benchmark import interval
from unlearn.metrics import average_gap, unlearning_metrics

METHODS = ("SalUn", "FT")


def gaps_against(
    results: Mapping[str, Mapping[str, float]], oracles: Sequence[Mapping[str, float]]
) -> dict[str, dict]:
    """Each method's average gap to each oracle's metrics, and their mean and 95% t-interval."""
    table = {}
    for name, metrics in results.items():
        gaps = [average_gap(metrics, oracle) for oracle in oracles]
        table[name] = {"gaps": gaps, **interval(gaps)}
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracles", type=int, default=8, help="independent oracles")
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--workspace", type=Path, default=REPO_ROOT / "runs" / "demo")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "demo-oracles.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as the demo
    warm_up_torch()
    data = tda.load_mnist1d(n_train=4000, n_test=1000, seed=0)
    checkpoints = tda.list_checkpoints(args.workspace / "models" / "seed-0")
    if not checkpoints:
        sys.exit(f"no demo model in {args.workspace}/models/seed-0: run `make demo` first")
    model = tda.load_member(demo.MODEL, checkpoints[-1])
    request = demo_unlearning.forget_request(model, data)
    methods = demo_unlearning.methods(demo.MODEL, demo.CONFIG)
    results = {
        name: unlearn.Unlearner(methods[name])
        .unlearn(model, data.train, request, test_data=data.test)
        .metrics
        for name in (*METHODS, demo_unlearning.ORACLE)
    }
    split = unlearn.ForgetSplit.of(data.train, request)
    seeds = list(range(args.first_seed, args.first_seed + args.oracles))
    root = args.workspace / "oracles"
    oracles = unlearn.load_or_train_oracles(
        demo.MODEL, data.train, request.forget_indices, demo.CONFIG, seeds, root
    )
    oracle_metrics = [
        unlearning_metrics(oracle, split.forget, split.retain, data.test, seed=request.seed)
        for oracle in oracles.models
    ]
    own = {name: average_gap(results[name], results[demo_unlearning.ORACLE]) for name in METHODS}
    table = gaps_against({name: results[name] for name in METHODS}, oracle_metrics)
    for name in METHODS:
        row = table[name]
        print(
            f"{name}: gap {own[name]:.2f} to the own-seed oracle; {row['mean']:.2f} ± "
            f"{row['ci95']:.2f} to {row['n']} oracles from seeds {seeds[0]}-{seeds[-1]}"
        )
    settings = {
        "request_id": request.request_id,
        "forget": len(request.forget_indices),
        "oracle_seeds": seeds,
        "request_seed": request.seed,
        "threads": 1,
    }
    results_record = {
        "own_seed_gap": own,
        "independent": table,
        "metrics": results,
        "oracle_metrics": oracle_metrics,
    }
    write_record(args.output, "demo_oracles", settings, 1, results_record)
    print(f"record: {args.output}")


if __name__ == "__main__":
    main()
