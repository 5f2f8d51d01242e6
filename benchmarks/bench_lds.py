"""LDS on MNIST-1D: our TRAK variants and grad-dot beside traker 0.3.2, on the same trained models.

Ground truth: ``--subsets`` random subsets (alpha 0.5) of the training set, each retrained with
``--gt-seeds`` seeds (joblib, one torch thread per worker); the LDS is measured against the mean
over seeds, with the noise ceiling of those seeds beside it. The ensemble members (seeds 0..M-1)
are trained once with ``tda.ensemble.train_ensemble``; ours and traker featurize the same members.

Workspace (default ``runs/bench_lds[-quick]/``, git-ignored): ``models/`` and ``ground_truth/``
are resumable; ``features/`` and ``traker/`` are rebuilt on every run so their wall times are
measured, and removed once scored.

Run from the repository root: ``python -m benchmarks.bench_lds [--quick] [--models 1 5 10 20]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed

from benchmarks.record import (
    REPO_ROOT,
    available_cores,
    markdown_table,
    output_path,
    require_peer,
    write_record,
)
from tda import (
    TRAK,
    DenseProjector,
    GradientFeaturizer,
    GradientSimilarity,
    GroundTruthStore,
    SparseProjector,
    SubsetRetrainer,
    TrainConfig,
    featurize,
    lds,
    load_member,
    load_mnist1d,
    noise_ceiling,
    open_feature_store,
    sample_subsets,
    train_ensemble,
)
from tda.ensemble import store_id
from tda.models import MLP

try:  # written by another engineer; benchmarked when present
    from tda.features.kronecker import KroneckerFeaturizer
except ImportError:
    KroneckerFeaturizer = None

CHUNK = 256  # examples per featurize batch for traker (ours uses its default chunk of 256)
GROUND_TRUTH_SEED = 1000  # retraining seeds 1000, 1001, ...: apart from the members' 0..M-1
QUICK = {
    "n_train": 400,
    "n_queries": 20,
    "subsets": 10,
    "gt_seeds": 2,
    "epochs": 3,
    "models": [1, 2],
    "dense_dims": [128],
    "sparse_dims": [128],
    "kronecker_dims": [128],
    "traker_dims": [128],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Full-scale defaults; ``--quick`` swaps in QUICK for every flag not given explicitly."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_lds", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="minutes-scale smoke run")
    add("--out", help="JSON path (default results/lds.json; --quick: runs/quick/)")
    add("--threads", type=int, default=available_cores(), help="torch threads")
    add("--workers", type=int, default=2, help="ground-truth joblib workers (1 thread each)")
    add("--workspace", type=Path, help="default runs/bench_lds[-quick]")
    add("--seed", type=int, default=0, help="data seed")
    add(
        "--subset-seed",
        type=int,
        default=1,
        help="seed of the ground-truth subsets (0 was the pilot that picked TRAK's damping)",
    )
    add("--alpha", type=float, default=0.5, help="fraction of the training set per subset")
    add("--n-train", type=int, default=4000)
    add("--n-queries", type=int, default=200, help="first test examples used as queries")
    add("--subsets", type=int, default=100)
    add("--gt-seeds", type=int, default=3, help="retraining seeds per subset")
    add("--epochs", type=int, default=30)
    add("--models", type=int, nargs="+", default=[1, 5, 10], help="ensemble sizes M")
    add("--dense-dims", type=int, nargs="*", default=[512, 2048])
    add("--sparse-dims", type=int, nargs="*", default=[2048])
    add("--kronecker-dims", type=int, nargs="*", default=[2048], help="both structures")
    add("--traker-dims", type=int, nargs="*", default=[512, 2048])
    add(
        "--traker-dtype",
        choices=["float16", "float32"],
        default="float16",
        help="traker's projection and storage dtype (float16, its default, is very slow on CPUs "
        "without fast half-precision matmuls)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.workspace is None:
        args.workspace = REPO_ROOT / "runs" / ("bench_lds-quick" if args.quick else "bench_lds")
    return args


def load_data(args):
    """MNIST-1D training set and the first ``n_queries`` test examples as queries."""
    n_test = -(-args.n_queries // 10) * 10  # load_mnist1d needs n_train + n_test divisible by 10
    splits = load_mnist1d(args.n_train, n_test, seed=args.seed)
    return splits.train, splits.test.subset(np.arange(args.n_queries))


def recipe(args) -> dict:
    """The training recipe shared by the members and the ground truth (TrainConfig defaults)."""
    return {
        "model": "MLP 40-128-128-10",
        "optimizer": "Adam",
        "lr": 3e-3,
        "batch_size": 64,
        "epochs": args.epochs,
        "n_train": args.n_train,
        "data_seed": args.seed,
    }


def ground_truth(args, train, queries, config) -> tuple[np.ndarray, np.ndarray, dict]:
    """Masks ``[m, n]`` and outputs ``[m, seeds, q]``, training only the pairs still missing."""
    masks = sample_subsets(len(train), args.alpha, args.subsets, seed=args.subset_seed)
    seeds = [GROUND_TRUTH_SEED + s for s in range(args.gt_seeds)]
    store = GroundTruthStore.create_or_open(
        args.workspace / "ground_truth",
        masks,
        seeds,
        queries.fingerprint(),
        recipe(args),
        train_fingerprint=train.fingerprint(),
    )
    retrainer = SubsetRetrainer(MLP, train, queries, config)
    todo = sorted({subset for subset, _ in store.missing()})
    start = time.perf_counter()
    done = Parallel(n_jobs=args.workers)(delayed(_record)(store, retrainer, s) for s in todo)
    run = {"seeds": seeds, "trained_this_run": sum(done), "seconds_this_run": _since(start)}
    return store.masks, store.outputs(), run


def _record(store: GroundTruthStore, retrainer: SubsetRetrainer, subset: int) -> int:
    torch.set_num_threads(1)  # workers share the cores
    return store.run(retrainer, [subset], progress=False)


def train_members(args, train, config) -> tuple[list, dict]:
    """Final checkpoints of members 0..M_max-1 (trained unless already on disk)."""
    start = time.perf_counter()
    members = train_ensemble(
        MLP, train, config, range(max(args.models)), args.workspace / "models", progress=False
    )
    finals = [(seed, checkpoints[-1]) for seed, checkpoints in sorted(members.items())]
    return finals, {"seeds": [seed for seed, _ in finals], "seconds_this_run": _since(start)}


def our_featurizers(args) -> list[tuple[str, int, object]]:
    """(projection name, nominal k, featurizer) for every configuration of ours."""
    configurations = [("Dense", k, GradientFeaturizer(DenseProjector(k))) for k in args.dense_dims]
    configurations += [
        ("Sparse", k, GradientFeaturizer(SparseProjector(k))) for k in args.sparse_dims
    ]
    if KroneckerFeaturizer is not None:
        for name, structure in (("Kronecker", "kronecker"), ("Khatri-Rao", "khatri_rao")):
            configurations += [
                (name, k, KroneckerFeaturizer(dim=k, structure=structure))
                for k in args.kronecker_dims
            ]
    return configurations


def warm_up_process(train) -> None:
    """One throwaway featurization, so the process's one-time costs (lazy imports, the first
    ``torch.func`` call) are charged neither to ours nor to traker, whichever runs first."""
    GradientFeaturizer(DenseProjector(8))(MLP(), train.inputs[:8], train.targets[:8])


def featurize_members(featurizer, members, train, queries, root: Path):
    """A fresh store holding every member's train and query features; seconds per member."""
    shutil.rmtree(root, ignore_errors=True)  # rebuilt so that the wall time is measured
    store = open_feature_store(root, featurizer)
    ids, seconds = [], []
    for seed, checkpoint in members:
        model = load_member(MLP, checkpoint)
        ids.append(store_id(seed, checkpoint))
        start = time.perf_counter()
        splits = {"train": train, "query": queries}
        featurize(model, splits, featurizer, store, checkpoint_id=ids[-1], progress=False)
        seconds.append(_since(start))
    return store, ids, seconds


def score_ours(attributor, store, ids: list[str]) -> tuple[np.ndarray, float]:
    """Scores ``[q, n]`` of the queries and the wall time of fit + score."""
    start = time.perf_counter()
    scores = attributor.fit(store, checkpoints=ids).score("query")
    return scores.double().numpy(), _since(start)


def run_ours(args, members, train, queries, truth) -> tuple[list[dict], dict]:
    """LDS rows of ours; also our Dense scores by (k, M) to compare traker's with."""
    rows, dense = [], {}
    for projection, k, featurizer in our_featurizers(args):
        root = args.workspace / "features" / f"{projection.lower()}-{k}"  # e.g. dense-2048
        store, ids, seconds = featurize_members(featurizer, members, train, queries, root)
        for count in args.models:
            for damping in (0.0, TRAK().damping):  # traker's formula, and our default
                scores, score_s = score_ours(TRAK(damping=damping), store, ids[:count])
                name, featurize_s = f"ours TRAK {projection} λ={damping:g}", sum(seconds[:count])
                rows.append(lds_row(name, k, count, scores, truth, featurize_s, score_s))
                rows[-1]["feature_dim"] = featurizer.output_dim(MLP())  # Kronecker's may differ
                if projection == "Dense" and damping == 0.0:
                    dense[(k, count)] = scores
        if projection == "Dense" and k == max(args.dense_dims):
            scores, score_s = score_ours(GradientSimilarity(), store, ids[:1])
            rows.append(lds_row("ours grad-dot (Dense)", k, 1, scores, truth, seconds[0], score_s))
        shutil.rmtree(root)
    return rows, dense


def make_traker(k: int, n_train: int, root: Path, dtype: str = "float16"):
    """TRAKer with its CPU defaults (normal BasicProjector, fp16) except block size = k, and the
    projection and storage in ``dtype``."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    model = MLP()
    p = sum(parameter.numel() for parameter in model.parameters())
    projector = BasicProjector(
        grad_dim=p,
        proj_dim=k,
        seed=0,
        proj_type=ProjectionType.normal,
        device="cpu",
        block_size=k,
        dtype=getattr(torch, dtype),
    )
    return TRAKer(
        model=model,
        task="image_classification",
        train_set_size=n_train,
        save_dir=str(root),
        device="cpu",
        projector=projector,
        use_half_precision=dtype == "float16",
        logging_level=logging.WARNING,
    )


def _batches(examples):
    for start in range(0, len(examples), CHUNK):
        yield examples.inputs[start : start + CHUNK], examples.targets[start : start + CHUNK]


def traker_featurize(k: int, members, train, queries, root: Path, dtype: str = "float16"):
    """traker's documented order (featurize all, finalize all, then query gradients), timed per
    member: ``train`` and ``query`` gradient passes and ``finalize`` (its (XᵀX)⁻¹ step)."""
    shutil.rmtree(root, ignore_errors=True)
    traker = make_traker(k, len(train), root, dtype)
    states = {seed: load_member(MLP, checkpoint).state_dict() for seed, checkpoint in members}
    times = {"train": [], "finalize": [], "query": []}
    for seed, state in states.items():
        start = time.perf_counter()
        traker.load_checkpoint(state, model_id=seed)
        for batch in _batches(train):
            traker.featurize(batch=batch, num_samples=len(batch[0]))
        times["train"].append(_since(start))
    for seed in states:
        _restore_projection_matrix(traker.projector)
        start = time.perf_counter()
        traker.finalize_features(model_ids=[seed])
        times["finalize"].append(_since(start))
    _restore_projection_matrix(traker.projector)
    for seed, state in states.items():
        start = time.perf_counter()
        traker.start_scoring_checkpoint("queries", state, model_id=seed, num_targets=len(queries))
        for batch in _batches(queries):
            traker.score(batch=batch, num_samples=len(batch[0]))
        times["query"].append(_since(start))
    return traker, list(states), times


def _restore_projection_matrix(projector) -> None:
    """traker 0.3.2's finalize_features() deletes BasicProjector.proj_matrix: a second call, or
    projecting for the same model id with a single block (block_size = k), then raises
    AttributeError. Regenerate the current block as BasicProjector.project itself would."""
    if not projector.proj_matrix_available:
        projector.generate_sketch_matrix(projector.generator_states[0])


def run_traker(args, members, train, queries, truth, dense: dict) -> list[dict]:
    """LDS rows of traker; scores are ``[n, q]`` there, transposed to our ``[q, n]``."""
    rows = []
    for k in args.traker_dims:
        root = args.workspace / "traker" / f"k{k}"
        traker, model_ids, times = traker_featurize(
            k, members, train, queries, root, args.traker_dtype
        )
        for count in args.models:
            start = time.perf_counter()
            scores = traker.finalize_scores("queries", model_ids=model_ids[:count])
            scores = np.asarray(scores, dtype=np.float64).T.copy()
            score_s = _since(start) + sum(times["finalize"][:count])
            featurize_s = sum(times["train"][:count]) + sum(times["query"][:count])
            row = lds_row("traker 0.3.2 TRAK", k, count, scores, truth, featurize_s, score_s)
            if (k, count) in dense:  # same sign and similar ranking as ours?
                row["pearson_vs_ours_dense"] = float(
                    np.corrcoef(scores.ravel(), dense[(k, count)].ravel())[0, 1]
                )
            rows.append(row)
        shutil.rmtree(root)
    return rows


def lds_row(method, k, count, scores, truth, featurize_s, score_s) -> dict:
    masks, outputs = truth
    result = lds(scores, masks, outputs)
    return {
        "method": method,
        "k": k,
        "models": count,
        "lds": result.mean,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "n_excluded": result.n_excluded,
        "featurize_s": featurize_s,
        "score_s": score_s,
    }


def table(rows: list[dict], ceiling: dict) -> str:
    cells = [
        [
            r["method"],
            r["k"],
            r["models"],
            f"{r['lds']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            f"{r['featurize_s']:.1f}",
            f"{r['score_s']:.2f}",
        ]
        for r in rows
    ]
    header = ["method", "k", "M", "LDS [95% CI]", "featurize (s)", "score (s)"]
    return markdown_table(header, cells) + (
        f"\n\nNoise ceiling of the ground truth ({ceiling['n_seeds']} seeds): "
        f"{ceiling['mean']:.3f} [{ceiling['ci_low']:.3f}, {ceiling['ci_high']:.3f}]"
    )


def settings(args) -> dict:
    """The run's settings for the record: every flag, the recipe, and what each side ran."""
    flags = {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }
    return {
        **flags,
        "recipe": recipe(args),
        "ours": "TRAK with relative damping 0 (traker's formula) and 0.1 (our default, picked on "
        "a pilot ground truth with subset seed 0); projector seed 0, derived per member",
        "traker": "TRAKer CPU defaults (normal BasicProjector, use_half_precision=True, "
        "lambda_reg=0) except block_size = k and, with --traker-dtype float32, projection and "
        f"storage in float32 (this run: {args.traker_dtype}); batches of 256",
        "kronecker_available": KroneckerFeaturizer is not None,
    }


def _since(start: float) -> float:
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.traker_dims:  # before the ground truth and our rows, not after them
        instead = "pass --traker-dims with no values to run ours alone"
        require_peer("trak", "traker==0.3.2", "bench_lds", instead)
    torch.set_num_threads(args.threads)
    train, queries = load_data(args)
    config = TrainConfig(epochs=args.epochs)  # Adam lr 3e-3, batch 64 (the defaults)
    masks, outputs, ground = ground_truth(args, train, queries, config)
    members, training = train_members(args, train, config)
    truth = (masks, outputs)
    warm_up_process(train)
    rows, dense = run_ours(args, members, train, queries, truth)
    rows += run_traker(args, members, train, queries, truth, dense)
    ceiling = noise_ceiling(outputs)
    ceiling = {name: getattr(ceiling, name) for name in ("mean", "ci_low", "ci_high", "n_seeds")}
    results = {"rows": rows, "noise_ceiling": ceiling, "ground_truth": ground, "ensemble": training}
    path = output_path("lds", args.quick, args.out)
    write_record(path, "lds", settings(args), args.threads, results)
    print(table(rows, ceiling))
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
