"""IF EK-FAC on the MNIST-1D CNN: every layer or the linear head, each with damping chosen by data.

Reads the workspace the Hydra pipeline builds for ``experiment=mnist1d_cnn`` (members
``models/seed-0..9``, ``ground_truth/`` of 100 subsets x 3 seeds on the first 200 test points;
README, "EK-FAC through convolutions"). For each variant and M members, the damping as a fraction
of each member's mean eigenvalue is chosen by LDS on a *selection* half of the subsets and reported
on the other half (:func:`tda.select_damping`'s split, seed 0), as ``bench_fisher`` does for the
Fisher. Every fraction re-damps one fit per member, so the grid costs scoring only.

Run from the repository root: ``python -m benchmarks.bench_conv_ekfac``.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch

from benchmarks.bench_fisher import RELATIVE_GRID, redamped_scores
from benchmarks.record import markdown_table, output_path, write_record
from tda import (
    GroundTruthStore,
    list_checkpoints,
    load_member,
    load_mnist1d,
    select_damping,
)
from tda.models import CNN1d

VARIANTS = {"every layer": None, "linear head only": ["head.weight", "head.bias"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("runs/mnist1d_cnn"))
    parser.add_argument("--models", type=int, nargs="+", default=[1, 10], help="ensemble sizes M")
    parser.add_argument("--out", help="JSON path (default results/conv-ekfac.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    truth = GroundTruthStore.open(args.workspace / "ground_truth")
    splits = load_mnist1d(n_train=4000, n_test=1000)
    queries = splits.test.subset(range(200))
    if queries.fingerprint() != truth.query_fingerprint:
        raise ValueError(f"{truth.root} measures other queries than the first 200 test points")
    factory = partial(CNN1d, 40, 32, 10)  # the experiment's model
    members = [
        load_member(factory, list_checkpoints(args.workspace / "models" / f"seed-{seed}")[-1])
        for seed in range(max(args.models))
    ]
    rows, results = [], []
    for variant, parameters in VARIANTS.items():
        per_member = [
            redamped_scores(m, splits.train, queries, "empirical Fisher", parameters)
            for m in members
        ]  # [M, len(RELATIVE_GRID), q, n], one EK-FAC fit per member
        for count in args.models:
            totals = sum(per_member[:count])
            choice = select_damping(
                lambda r, t=totals: t[RELATIVE_GRID.index(r)], RELATIVE_GRID, truth.masks,
                truth.outputs(),
            )  # fmt: skip
            curve = [None if r is None else round(r.mean, 4) for r in choice.selection]
            result = {"variant": variant, "models": count, "fraction": choice.damping}
            result |= {"report_lds": choice.report.mean, "selection_curve": curve}
            result["report_ci"] = [choice.report.ci_low, choice.report.ci_high]
            results.append(result)
            low, high = choice.report.ci_low, choice.report.ci_high
            report = f"{choice.report.mean:.3f} [{low:.3f}, {high:.3f}]"
            rows.append([variant, count, f"{choice.damping:g}", report])
            print(variant, count, choice, flush=True)
    table = markdown_table(["EK-FAC through", "M", "chosen fraction", "report-half LDS"], rows)
    print(table)
    settings = {"workspace": str(args.workspace), "models": args.models, "grid": RELATIVE_GRID}
    path = output_path("conv-ekfac", False, args.out)
    write_record(path, "conv-ekfac", settings, 1, {"rows": results, "table": table})


if __name__ == "__main__":
    main()
