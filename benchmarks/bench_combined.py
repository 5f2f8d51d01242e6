"""Weighted sums of attribution methods, weights chosen on held-out LDS ground truth.

Can mixing methods reach an LDS of 0.40 with at most 5 models on the MNIST-1D MLP? Each method's
scores (the mean over the first M members) are scaled per query to unit standard deviation, so a
weight means the same for every query, and the mixtures are the points of a simplex grid over
the methods. Every setting (one method, or a mixture) is a candidate of
:func:`tda.select_damping` over the candidates' indices: chosen by LDS on the *selection* half
of the ground-truth subsets (its convention: ``split="subsets"``, holdout 0.5, seed 0) and
reported on the other half. Only the report-half LDS of the chosen candidate is an estimate to
put in a table; the best report-half value over all candidates is not.

Components come from ``bench_methods``'s workspace (``runs/bench_methods/scores/MNIST-1D``):
IF CG (damping 0.01), IF EK-FAC (empirical Fisher), Source L=3 and TracIn, cached there by
``python -m benchmarks.bench_methods``; TRAK (``SparseProjector(2048)``, default damping) is
featurized here and kept beside them; and EK-FAC (empirical Fisher) averaged over the 5 saved
checkpoints of ``bench_methods``'s checkpointed members (the same training runs, so still M
models).

Run from the repository root: ``python -m benchmarks.bench_combined``.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_methods
from benchmarks.bench_methods import cached, featurized, influence
from benchmarks.record import available_cores, markdown_table, output_path, write_record
from tda import (
    TRAK,
    EKFACSolver,
    GradientFeaturizer,
    SparseProjector,
    lds,
    load_member,
    select_damping,
)
from tda.models import MLP

CACHED = {  # row name -> bench_methods's cache key
    "IF CG λ=0.01": "IF_CG_λ=0.01",
    "IF EK-FAC (empirical Fisher)": "IF_EK-FAC_(empirical_Fisher)",
    "Source L=3 (EK-FAC)": "Source_L=3_(EK-FAC)",
    "TracIn-CP": "TracIn-CP",
}
# bench_fisher's key names the Fisher; bench_methods's row of the library default (the empirical
# Fisher, the same solver and settings) is read where bench_fisher has not run
ALTERNATIVES = {"IF_EK-FAC_(empirical_Fisher)": ("IF_EK-FAC",)}
CHECKPOINT_MEAN = "IF EK-FAC (empirical Fisher), mean over 5 checkpoints"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_combined", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--out", help="JSON path (default results/combined.json)")
    add("--threads", type=int, default=available_cores(), help="torch threads")
    add("--models", type=int, nargs="+", default=[1, 5], help="M (members 0..M-1)")
    add("--step", type=float, default=0.1, help="step of the simplex grid of weights")
    add("--dim", type=int, default=2048, help="TRAK's sparse JL dimension")
    add("--split-seed", type=int, default=0, help="seed of the subset split (select_damping's)")
    args = parser.parse_args(argv)
    args.quick, args.checkpoints = False, 5  # bench_methods's checkpointed members
    args.workspace = bench_methods.parse_args([]).workspace
    return args


def cached_mean(root, key: str, count: int) -> np.ndarray:
    """Mean of bench_methods's cached score matrices of members 0..count-1 (under ``key``, or
    else its alternative)."""
    for name in (key, *ALTERNATIVES.get(key, ())):
        paths = [root / "scores" / "MNIST-1D" / name / f"model-{i}.npz" for i in range(count)]
        missing = [str(path) for path in paths if not path.exists()]
        if not missing:
            return sum(np.load(path)["scores"] for path in paths) / count
    raise FileNotFoundError(f"run python -m benchmarks.bench_methods first: {missing}")


def trak_scores(args, finals, train, queries, count: int) -> np.ndarray:
    """TRAK over the first ``count`` members, kept in the workspace once computed."""

    def compute():
        models = [load_member(MLP, checkpoint) for checkpoint in finals[:count]]
        featurizer = GradientFeaturizer(SparseProjector(args.dim))
        root = args.workspace / "combined-features"
        store, ids, _ = featurized(featurizer, models, train, queries, root)
        scores = TRAK().fit(store, checkpoints=ids).score("query").double().numpy()
        shutil.rmtree(root)
        return scores

    return cached(trak_scores_path(args.workspace, args.dim, count), compute, False)[0]


def trak_scores_path(workspace: Path, dim: int, count: int) -> Path:
    """Where :func:`trak_scores` keeps TRAK over ``count`` members at sparse JL ``dim`` (read by
    ``bench_fresh_lds`` and ``bench_ntk_lds`` too)."""
    return workspace / "scores" / "MNIST-1D" / f"TRAK_sparse_k{dim}" / f"models-{count}.npz"


def checkpoint_scores(args, runs, train, queries, count: int) -> tuple[np.ndarray, float]:
    """``[count, checkpoints, q, n]``: EK-FAC (empirical Fisher) at every saved checkpoint of
    the first ``count`` checkpointed members (5 per run), cached one file per checkpoint; and
    the seconds they took."""
    solver, model_of = EKFACSolver(sampled_labels=False), lambda c: load_member(MLP, c)  # noqa: E731
    root = args.workspace / "scores" / "MNIST-1D" / "IF_EK-FAC_per_checkpoint"
    members, seconds = [], 0.0
    for index, run in enumerate(runs[:count]):
        stacked = []
        for checkpoint in run:
            path = root / f"model-{index}" / f"{checkpoint.checkpoint_id}.npz"
            score = lambda c=checkpoint: influence(solver, model_of, train, queries)(c)  # noqa: E731
            scores, took, _ = cached(path, score, False)
            stacked.append(scores)
            seconds += took
        members.append(np.stack(stacked))
    return np.stack(members), seconds


def checkpoint_sweep(per_checkpoint: np.ndarray, truth, args) -> dict:
    """How many of the last checkpoints to average, chosen on the selection half."""
    counts = list(range(1, per_checkpoint.shape[1] + 1))
    last = lambda c: per_checkpoint[:, -int(c) :].mean(axis=(0, 1))  # noqa: E731
    choice = select_damping(last, counts, *truth, seed=args.split_seed)
    return {"last_checkpoints": counts, "selection": [_summary(r) for r in choice.selection],
        "chosen": int(choice.damping), "report": _summary(choice.report)}  # fmt: skip


def unit_rows(scores: np.ndarray) -> np.ndarray:
    """Each query's scores divided by their standard deviation over the training set."""
    return scores / scores.std(axis=1, keepdims=True)


def simplex(size: int, step: float) -> list[tuple[float, ...]]:
    """Weights on a grid of ``step`` that sum to 1 (one-hot weights included)."""
    ticks = round(1 / step)
    points = [c for c in itertools.product(range(ticks + 1), repeat=size) if sum(c) == ticks]
    return [tuple(v / ticks for v in point) for point in points]


def choose(components: dict[str, np.ndarray], truth, args) -> dict:
    """The simplex point with the best selection-half LDS and its report-half LDS."""
    names, masks, outputs = list(components), *truth
    stacked = np.stack([unit_rows(components[name]) for name in names])
    weights = simplex(len(names), args.step)
    mix = lambda index: np.tensordot(weights[int(index)], stacked, axes=1)  # noqa: E731
    choice = select_damping(mix, range(len(weights)), masks, outputs, seed=args.split_seed)
    report = choice.report_subsets
    singles = {}
    for position, name in enumerate(names):
        one = weights.index(tuple(float(i == position) for i in range(len(names))))
        singles[name] = {"selection": _summary(choice.selection[one]),
            "report": _summary(lds(stacked[position], masks[report], outputs[report]))}  # fmt: skip
    best = int(choice.damping)
    return {"weights": dict(zip(names, weights[best], strict=True)),
        "selection": _summary(choice.selection[best]), "report": _summary(choice.report),
        "all_subsets": _summary(lds(mix(best), masks, outputs)), "singles": singles,
        "grid_points": len(weights)}  # fmt: skip


def _summary(result) -> dict:
    return {"lds": result.mean, "ci_low": result.ci_low, "ci_high": result.ci_high}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, queries, config, truth, finals, info = bench_methods.mnist_setup(args)
    runs, _ = bench_methods.checkpointed_members(args, train, config, finals)
    rows, sweeps = [], []
    for count in args.models:
        everything = {name: cached_mean(args.workspace, key, count) for name, key in CACHED.items()}
        everything["TRAK"] = trak_scores(args, finals, train, queries, count)
        per_checkpoint, seconds = checkpoint_scores(args, runs, train, queries, count)
        everything[CHECKPOINT_MEAN] = per_checkpoint.mean(axis=(0, 1))
        sweep = checkpoint_sweep(per_checkpoint, truth, args)
        every = _summary(lds(everything[CHECKPOINT_MEAN], *truth))
        sweeps.append({"models": count, "seconds": seconds, **sweep,
            "all_checkpoints_all_subsets": every})  # fmt: skip
        cheap = tuple(name for name in everything if not name.startswith("IF CG"))
        for names in (("IF CG λ=0.01", "IF EK-FAC (empirical Fisher)", "TRAK"), cheap,
            tuple(everything)):  # fmt: skip
            result = choose({name: everything[name] for name in names}, truth, args)
            rows.append({"models": count, "components": list(names), **result})
    results = {"rows": rows, "checkpoint_sweeps": sweeps, "ground_truth": info["ground_truth"],
        "total_seconds": time.perf_counter() - start}  # fmt: skip
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = output_path("combined", False, args.out)
    settings = {
        **flags,
        "split": "subsets (select_damping's)",
        "members": "seeds 0..M-1",
        "components": {
            **CACHED,
            "TRAK": "SparseProjector(dim), TRAK() default damping",
            CHECKPOINT_MEAN: "bench_methods's checkpointed members (epochs 6..30, Adam)",
        },
    }
    write_record(path, "combined", settings, args.threads, results)
    cells = [[r["models"], ", ".join(f"{n} {w:.1f}" for n, w in r["weights"].items() if w),
        _cell(r["selection"]), _cell(r["report"])] for r in rows]  # fmt: skip
    print(markdown_table(["M", "chosen weights", "selection half", "report half"], cells))
    cells = [[s["models"], ", ".join(f"{v['lds']:.3f}" for v in s["selection"]), s["chosen"],
        _cell(s["report"]), _cell(s["all_checkpoints_all_subsets"])] for s in sweeps]  # fmt: skip
    header = ["M", "selection LDS, last 1..5 checkpoints", "chosen", "report half", "all 5, all"]
    print("\n" + markdown_table(header, cells))
    print(f"written to {path}", file=sys.stderr)


def _cell(summary: dict) -> str:
    return f"{summary['lds']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]"


if __name__ == "__main__":
    main()
