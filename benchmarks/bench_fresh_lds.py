"""LDS on fresh MNIST-1D subsets: a clean estimate for IF EK-FAC averaged over checkpoints.

``bench_combined`` chose EK-FAC (empirical Fisher) averaged over the 5 saved checkpoints of each
of 5 runs after looking at ``bench_lds``'s ground truth (subset seed 1) twice. This benchmark draws
new subsets (``--subset-seed 2``, retraining seeds 2000, 2001, 2002: never used before) for the
same setting (data, MLP, Adam recipe, 200 queries, alpha 0.5) and scores, with no choice made on
them, the library's ``CheckpointAverage(InfluenceFunction(EKFACSolver()))`` over the runs that
``bench_methods`` trained with ``TrainConfig(checkpoints=5)`` (their finals are bitwise
``bench_lds``'s members), beside references: plain EK-FAC (last checkpoint), and the score
matrices ``bench_methods``/``bench_combined`` cached (IF CG, TRAK, TracIn, Source) when present.

Workspace ``runs/bench_fresh_lds/ground_truth`` (git-ignored, resumable).

Run from the repository root: ``python -m benchmarks.bench_fresh_lds --threads 1``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed

from benchmarks import bench_lds, bench_methods
from benchmarks.record import REPO_ROOT, markdown_table, output_path, write_record
from tda import EKFACSolver, GroundTruthStore, SubsetRetrainer, TrainConfig, lds, sample_subsets
from tda import noise_ceiling as ceiling_of
from tda.methods import CheckpointAverage, InfluenceFunction, TrainingRun, attribute_runs
from tda.models import MLP

CACHED = {  # row name -> (cache directory under runs/bench_methods/scores/MNIST-1D, file pattern)
    "IF CG λ=0.01": ("IF_CG_λ=0.01", "model-{i}.npz"),
    "TRAK (sparse 2048)": ("TRAK_sparse_k2048", "models-{m}.npz"),  # bench_combined's
    "TracIn-CP": ("TracIn-CP", "model-{i}.npz"),
    "Source L=3 (EK-FAC)": ("Source_L=3_(EK-FAC)", "model-{i}.npz"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_fresh_lds", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--out", help="JSON path (default results/fresh-lds.json)")
    add("--threads", type=int, default=1, help="torch threads")
    add("--workers", type=int, default=2, help="ground-truth joblib workers (1 thread each)")
    add("--workspace", type=Path, default=REPO_ROOT / "runs" / "bench_fresh_lds")
    add("--subsets", type=int, default=100)
    add("--subset-seed", type=int, default=2, help="bench_lds used 1 (and 0 for a pilot)")
    add("--gt-seeds", type=int, nargs="+", default=[2000, 2001, 2002], help="retraining seeds")
    add("--models", type=int, nargs="+", default=[1, 5], help="M (runs 0..M-1)")
    add("--ground-truth-only", action="store_true", help="train the ground truth and stop")
    return parser.parse_args(argv)


def ground_truth(args, train, queries, config, lds_args) -> tuple[np.ndarray, np.ndarray, dict]:
    """Masks ``[m, n]`` and outputs ``[m, seeds, q]`` on the fresh subsets (resumable)."""
    masks = sample_subsets(len(train), lds_args.alpha, args.subsets, args.subset_seed)
    store = GroundTruthStore.create_or_open(args.workspace / "ground_truth", masks,
        args.gt_seeds, queries.fingerprint(), bench_lds.recipe(lds_args),
        train_fingerprint=train.fingerprint())  # fmt: skip
    retrainer = SubsetRetrainer(MLP, train, queries, config)
    todo = sorted({subset for subset, _ in store.missing()})
    start = time.perf_counter()
    chunks = [todo[worker :: args.workers] for worker in range(args.workers)]
    done = Parallel(n_jobs=args.workers)(delayed(_record)(store, retrainer, c) for c in chunks)
    info = {"subsets": args.subsets, "subset_seed": args.subset_seed, "seeds": args.gt_seeds,
        "trained_this_run": sum(done), "seconds_this_run": time.perf_counter() - start}  # fmt: skip
    return store.masks, store.outputs(), info


def _record(store: GroundTruthStore, retrainer: SubsetRetrainer, subsets: list[int]) -> int:
    torch.set_num_threads(1)  # workers share the cores
    return store.run(retrainer, subsets, progress=False)


def training_runs(train, config) -> tuple[list[TrainingRun], dict]:
    """bench_methods's 5 checkpointed runs (seeds 0..4), trained again only if absent."""
    methods_args = bench_methods.parse_args([])
    lds_args = bench_lds.parse_args([])
    members, _ = bench_lds.train_members(lds_args, train, config)
    finals = [checkpoint for _, checkpoint in members]
    series, info = bench_methods.checkpointed_members(methods_args, train, config, finals)
    return [TrainingRun(MLP, tuple(checkpoints), train) for checkpoints in series], info


def library_rows(runs, queries, truth, counts) -> tuple[list[dict], dict]:
    """CheckpointAverage EK-FAC and plain EK-FAC through ``attribute_runs``; M = 5 scores kept."""
    methods = {
        "IF EK-FAC (empirical Fisher), mean over 5 checkpoints":
            CheckpointAverage(InfluenceFunction(EKFACSolver())),
        "IF EK-FAC (empirical Fisher), last checkpoint": InfluenceFunction(EKFACSolver()),
    }  # fmt: skip
    rows, kept = [], {}
    for name, attributor in methods.items():
        for count in counts:
            start = time.perf_counter()
            scores = attribute_runs(attributor, runs[:count], queries).double().numpy()
            rows.append(row(name, count, scores, truth, time.perf_counter() - start))
            kept[name, count] = scores
    return rows, kept


def cached_rows(truth, counts) -> list[dict]:
    """Rows of the score matrices cached by bench_methods / bench_combined (skipped if absent)."""
    root, rows = bench_methods.parse_args([]).workspace / "scores" / "MNIST-1D", []
    for name, (key, pattern) in CACHED.items():
        for count in counts:
            paths = {pattern.format(i=i, m=count) for i in range(count)}
            paths = [root / key / file for file in sorted(paths)]
            if not all(path.exists() for path in paths):
                print(f"skipped {name} M={count}: no cached scores in {root / key} (run "
                      "bench_methods and bench_combined first)", flush=True)  # fmt: skip
                continue
            scores = sum(np.load(path)["scores"] for path in paths) / len(paths)
            rows.append(row(name, count, scores, truth, None, cached=str(root / key)))
    return rows


def row(method: str, models: int, scores, truth, seconds, **extra) -> dict:
    result = lds(scores, *truth)
    return {"method": method, "models": models, "lds": result.mean, "ci_low": result.ci_low,
        "ci_high": result.ci_high, "n_excluded": result.n_excluded, "seconds": seconds,
        **extra}  # fmt: skip


def combined_agreement(kept) -> float | None:
    """Max |library CheckpointAverage − bench_combined's cached per-checkpoint mean| at M = 5."""
    root = bench_methods.parse_args([]).workspace / "scores" / "MNIST-1D"
    paths = sorted((root / "IF_EK-FAC_per_checkpoint").glob("model-[0-4]/*.npz"))
    key = ("IF EK-FAC (empirical Fisher), mean over 5 checkpoints", 5)
    if len(paths) != 25 or key not in kept:
        return None
    cached = sum(np.load(path)["scores"] for path in paths) / 25
    return float(np.abs(kept[key] - cached).max() / np.abs(cached).max())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lds_args = bench_lds.parse_args([])
    train, queries = bench_lds.load_data(lds_args)
    config = TrainConfig(epochs=lds_args.epochs)
    masks, outputs, truth_info = ground_truth(args, train, queries, config, lds_args)
    if args.ground_truth_only:
        return
    truth = (masks, outputs)
    ceiling = ceiling_of(outputs)
    truth_info["noise_ceiling"] = {k: getattr(ceiling, k) for k in ("mean", "ci_low", "ci_high")}
    runs, runs_info = training_runs(train, config)
    rows, kept = library_rows(runs, queries, truth, args.models)
    rows += cached_rows(truth, args.models)
    results = {"rows": rows, "ground_truth": truth_info, "runs": runs_info,
        "relative_max_difference_vs_bench_combined_cache": combined_agreement(kept),
        "total_seconds": time.perf_counter() - start}  # fmt: skip
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings = {**flags, "recipe": bench_lds.recipe(lds_args), "alpha": lds_args.alpha,
        "n_queries": lds_args.n_queries, "selection": "none: every row is reported as computed",
        "runs": "bench_methods's checkpointed members, seeds 0..M-1, epochs 6..30 (Adam)",
        "EK-FAC": "EKFACSolver() defaults: empirical Fisher, damping 0.1 x mean eigenvalue",
    }  # fmt: skip
    path = output_path("fresh-lds", False, args.out)
    write_record(path, "fresh-lds", settings, args.threads, results)
    cells = [[r["method"], r["models"], f"{r['lds']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"]
        for r in rows]  # fmt: skip
    print(markdown_table(["method", "M", "LDS [95% CI], fresh subsets"], cells))
    print(f"noise ceiling {ceiling}\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
