"""LDS of every attribution method on MNIST-1D + MLP and digits + logistic regression, beside
kronfluence 1.0.1 (EK-FAC, K-FAC) on the same models and the same ground truth.

MNIST-1D reuses ``bench_lds``'s workspace as it is: its members (seeds 0..9) and its ground truth
(100 subsets x 3 seeds, 200 queries, subset seed 1), rebuilt through the same functions if absent.
TracIn and Source need several checkpoints per model: members 0..4 are retrained with the same
recipe (Adam) and ``TrainConfig(checkpoints=5)`` into ``<workspace>/checkpointed/``; training is
deterministic, so their final checkpoints are bitwise the benchmark members (checked, recorded).

Digits: all 10 classes, float64 ``LogisticRegression`` with an L2 penalty, trained by full-batch
L-BFGS to a gradient below 1e-8; its ground truth retrains 100 subsets (alpha 0.5) once each:
the objective is strictly convex, so the optimum does not depend on the seed.

Workspace ``runs/bench_methods[-quick]/`` (git-ignored): the digits ground truth, checkpointed
members and each (method, model) score matrix with the seconds it took are kept, so an interrupted
run resumes; ``--fresh-scores`` recomputes the scores. Wall time = featurize + fit + score of the
M models (not the training of the models or of the ground truth).

Run from the repository root: ``python -m benchmarks.bench_methods [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_lds
from benchmarks.logistic import LogisticRetrainer, fit_logistic_regression
from benchmarks.peer_kronfluence import kronfluence_scores, plain_linear
from benchmarks.record import (
    REPO_ROOT,
    _version,
    available_cores,
    markdown_table,
    output_path,
    require_peer,
    write_record,
)
from tda import (
    TRAK,
    ClassificationTask,
    ConjugateGradientSolver,
    EKFACSolver,
    Examples,
    ExplicitSolver,
    GradientFeaturizer,
    GradientSimilarity,
    GroundTruthStore,
    IdentityProjector,
    InfluenceFunction,
    KFACSolver,
    LiSSASolver,
    SolverDivergedError,
    Source,
    SparseProjector,
    TracIn,
    TrainConfig,
    featurize,
    lds,
    load_digits,
    load_member,
    noise_ceiling,
    open_feature_store,
    sample_subsets,
    train_ensemble,
)
from tda.curvature import curvature_vector_product
from tda.methods import EKFACEigenbasis
from tda.models import MLP

TASK = ClassificationTask()
FAILURES = (SolverDivergedError, ValueError, FloatingPointError, RuntimeError)
QUICK = {"digits_subsets": 10, "digits_queries": 20, "checkpoints": 3}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Full-scale defaults; ``--quick`` uses bench_lds's quick workspace and smaller digits."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_methods", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="minutes-scale smoke run")
    add("--out", help="JSON path (default results/methods.json; --quick: runs/quick/)")
    add("--threads", type=int, default=available_cores(), help="torch threads")
    add("--workspace", type=Path, help="default runs/bench_methods[-quick]")
    add("--fresh-scores", action="store_true", help="recompute every cached score matrix")
    add("--dim", type=int, default=2048, help="sparse JL dimension of TRAK and grad-dot")
    add("--trak-models", type=int, nargs="+", default=[1, 5, 10])
    add("--models", type=int, nargs="+", default=[1, 5], help="M of the other MNIST-1D methods")
    add("--checkpoints", type=int, default=5, help="checkpoints per model for TracIn / Source")
    add("--segments", type=int, nargs="+", default=[2, 3], help="Source's L")
    add("--damping", type=float, default=0.01, help="CG and LiSSA damping on MNIST-1D")
    add("--digits-subsets", type=int, default=100)
    add("--digits-queries", type=int, default=100)
    add("--digits-l2", type=float, default=1e-3, help="L2 coefficient of the digits objective")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK, trak_models=[1, 2], models=[1, 2])
        args = parser.parse_args(argv)
    if args.workspace is None:
        name = "bench_methods-quick" if args.quick else "bench_methods"
        args.workspace = REPO_ROOT / "runs" / name
    return args


# ---------------------------------------------------------------- rows, timing, resumable scores


def _since(start: float) -> float:
    return time.perf_counter() - start


def cached(path: Path, compute: Callable, fresh: bool) -> tuple[np.ndarray, float, dict]:
    """Scores ``[q, n]`` (float64), their seconds and the settings chosen while computing them
    (``compute`` returns scores or ``(scores, settings)``), computed once and kept at ``path``
    with the torch threads they were timed with (:func:`cached_threads`)."""
    if path.exists() and not fresh:
        saved = np.load(path)
        return saved["scores"], float(saved["seconds"]), json.loads(str(saved["info"]))
    start = time.perf_counter()
    result = compute()
    scores, info = result if isinstance(result, tuple) else (result, {})
    scores, seconds = np.asarray(scores, dtype=np.float64), _since(start)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), scores=scores, seconds=seconds, info=json.dumps(info),
             threads=torch.get_num_threads())  # fmt: skip
    os.replace(path.with_suffix(".tmp.npz"), path)
    return scores, seconds, info


def cached_threads(path: Path) -> int | None:
    """The torch threads the scores cached at ``path`` were timed with (``None``: cached before
    they were recorded): a cached row keeps the seconds of the run that computed it."""
    saved = np.load(path)
    return int(saved["threads"]) if "threads" in saved.files else None


def _threads_of(timed: list[int | None]) -> int | list | None:
    """The threads a row's members were timed with: one value, or every value when they differ
    (``None``: unrecorded)."""
    used = set(timed)
    return used.pop() if len(used) == 1 else sorted(used, key=str)


def lds_row(setting, method, models, scores, truth, seconds, **extra) -> dict:
    result = lds(scores, *truth)
    return {
        "setting": setting, "method": method, "models": models, "lds": result.mean,
        "ci_low": result.ci_low, "ci_high": result.ci_high, "n_excluded": result.n_excluded,
        "seconds": seconds, **extra,
    }  # fmt: skip


@dataclass
class Bench:
    """What every method of one setting is scored against, and where its scores are kept."""

    setting: str
    truth: tuple[np.ndarray, np.ndarray]
    root: Path
    fresh: bool
    first: dict  # method -> scores of the first model, for the agreement checks

    def ensemble(self, method: str, members: Sequence, score_one, counts: Sequence[int]):
        """Rows of ``score_one(member)`` averaged over the first M members, M in ``counts``;
        a failure becomes a row that says what the user would see."""
        rows, total, seconds, infos, threads = [], None, 0.0, [], []
        key = method.replace(" ", "_").replace("/", "-")
        for index, member in enumerate(members[: max(counts)]):
            path = self.root / "scores" / self.setting / key / f"model-{index}.npz"
            try:
                scores, took, info = cached(path, lambda m=member: score_one(m), self.fresh)
            except FAILURES as error:
                return rows + [self.failure(method, index + 1, error)]
            total, seconds = (scores if total is None else total + scores), seconds + took
            infos += [info] if info else []
            threads.append(cached_threads(path))
            self.first.setdefault(method, scores)
            if index + 1 in counts:
                scores = total / (index + 1)
                row = lds_row(self.setting, method, index + 1, scores, self.truth, seconds)
                row["threads"] = _threads_of(threads)
                rows.append({**row, "chosen": list(infos)} if infos else row)
        return rows

    def failure(self, method: str, models: int, error: Exception) -> dict:
        print(f"  {method}: {type(error).__name__}: {error}", file=sys.stderr)
        return {"setting": self.setting, "method": method, "models": models,
                "error": f"{type(error).__name__}: {error}"}  # fmt: skip


def agreements(first: dict, pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """Pearson correlation of the first model's scores of two methods (sign and accuracy checks)."""
    correlation = lambda a, b: float(np.corrcoef(first[a].ravel(), first[b].ravel())[0, 1])  # noqa: E731
    return [
        {"method": a, "reference": b, "pearson": correlation(a, b)}
        for a, b in pairs
        if a in first and b in first
    ]


# ---------------------------------------------------------------- methods shared by both settings


def influence(solver, model_of: Callable, train: Examples, queries: Examples):
    """``score_one`` of the influence function over ``solver`` on a member."""
    return lambda member: InfluenceFunction(solver).fit(model_of(member), train).score(queries)


def top_eigenvalue(model, train: Examples, curvature: str, iterations: int = 30) -> float:
    """Largest eigenvalue of the curvature by power iteration (LiSSA's ``scale``)."""
    size = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(1, size, generator=generator, dtype=next(model.parameters()).dtype)
    value = 0.0
    for _ in range(iterations):
        vector = vector / vector.norm()
        product = curvature_vector_product(model, TASK, train, vector, curvature=curvature)
        value, vector = float((product * vector).sum()), product
    return value


def lissa_depth(scale: float, damping: float, error: float = 1e-2) -> int:
    """Steps for the Neumann series' error factor :math:`(1 - \\lambda/s)^T` to reach ``error``."""
    return math.ceil(math.log(error) / math.log1p(-damping / scale))


def featurized(featurizer, models: Sequence, train, queries, root: Path):
    """A fresh feature store of the models' train and query features, and its seconds."""
    shutil.rmtree(root, ignore_errors=True)
    store, ids, seconds = open_feature_store(root, featurizer), [], []
    for index, model in enumerate(models):
        ids.append(f"model-{index}")
        start = time.perf_counter()
        splits = {"train": train, "query": queries}
        featurize(model, splits, featurizer, store, checkpoint_id=ids[-1], progress=False)
        seconds.append(_since(start))
    return store, ids, seconds


def projected_rows(bench: Bench, featurizer, models, train, queries, trak_counts) -> list[dict]:
    """TRAK (default damping) at each M and grad-dot at M = 1 on one featurization."""
    store, ids, seconds = featurized(featurizer, models, train, queries, bench.root / "features")
    rows = []
    for name, attributor, counts in (
        ("TRAK", TRAK, trak_counts),
        ("grad-dot", GradientSimilarity, [1]),
    ):
        for count in counts:
            start = time.perf_counter()
            scores = attributor().fit(store, checkpoints=ids[:count]).score("query").double()
            took = sum(seconds[:count]) + _since(start)
            bench.first.setdefault(name, scores.numpy())
            row = lds_row(bench.setting, name, count, scores, bench.truth, took)
            rows.append({**row, "threads": torch.get_num_threads()})  # timed in this run
    shutil.rmtree(bench.root / "features")
    return rows


# ---------------------------------------------------------------- kronfluence 1.0.1


def kronfluence_rows(bench: Bench, variants, members, model_of, train, queries, counts):
    """Rows of kronfluence's variants ``(name, strategy, options)``; one untimed warm-up first."""
    import warnings

    warnings.filterwarnings("ignore", module="kronfluence")  # its CPU GradScaler notice
    root = bench.root / "kronfluence"
    kronfluence_scores(model_of(members[0]), train.subset(range(64)), queries, root, "ekfac")
    rows = []
    for name, strategy, options in variants:
        score = lambda member, s=strategy, o=options: kronfluence_scores(  # noqa: E731
            model_of(member), train, queries, root, s, **o)  # fmt: skip
        rows += bench.ensemble(name, members, score, counts)
    return rows


def lissa_scores(model, train, queries, damping: float, curvature: str, batch_size: int):
    """LiSSA with ``scale`` = the top curvature eigenvalue (power iteration) and the depth that
    brings the series' error factor to 1%: settings that converge. Returns the scores and them."""
    scale = top_eigenvalue(model, train, curvature)
    depth = lissa_depth(scale, damping)
    solver = LiSSASolver(curvature, damping, scale, depth, batch_size)
    scores = InfluenceFunction(solver).fit(model, train).score(queries)
    return scores, {"scale": scale, "depth": depth, "batch_size": batch_size}


# ---------------------------------------------------------------- MNIST-1D + MLP


def mnist_setup(args):
    """bench_lds's data, ground truth and members, opened (or rebuilt) through its functions."""
    quick = ["--quick", "--workspace", str(args.workspace / "lds")]  # a small one of our own
    lds_args = bench_lds.parse_args(quick if args.quick else [])
    train, queries = bench_lds.load_data(lds_args)
    config = TrainConfig(epochs=lds_args.epochs)
    masks, outputs, ground = bench_lds.ground_truth(lds_args, train, queries, config)
    members, training = bench_lds.train_members(lds_args, train, config)
    finals = [checkpoint for _, checkpoint in members]
    info = {"workspace": str(lds_args.workspace), "recipe": bench_lds.recipe(lds_args),
            "ground_truth": ground, "ensemble": training}  # fmt: skip
    return train, queries, config, (masks, outputs), finals, info


def checkpointed_members(args, train, config, finals) -> tuple[list[list], dict]:
    """Members 0..M-1 retrained with the same recipe, saving ``--checkpoints`` checkpoints."""
    saved = TrainConfig(epochs=config.epochs, checkpoints=min(args.checkpoints, config.epochs))
    start = time.perf_counter()
    members = train_ensemble(MLP, train, saved, range(max(args.models)),
        args.workspace / "checkpointed", progress=False)  # fmt: skip
    runs = [members[seed] for seed in range(max(args.models))]
    same = [run[-1].fingerprint == f.fingerprint for run, f in zip(runs, finals, strict=False)]
    return runs, {"checkpoint_epochs": saved.checkpoint_epochs(), "optimizer": "Adam (recipe)",
        "final_equals_benchmark_member": all(same), "members_compared": len(same),
        "seconds_this_run": _since(start)}  # fmt: skip


def mnist_rows(args, bench: Bench, train, queries, finals, runs) -> list[dict]:
    """Every method on the MNIST-1D members (finals) and their checkpoint series (runs)."""
    model_of = lambda checkpoint: load_member(MLP, checkpoint)  # noqa: E731
    counts, damping = args.models, args.damping
    featurizer = GradientFeaturizer(SparseProjector(args.dim))
    models = [model_of(c) for c in finals[: max(args.trak_models)]]
    rows = projected_rows(bench, featurizer, models, train, queries, args.trak_models)
    solvers = [
        ("IF EK-FAC", EKFACSolver(), counts),
        ("IF EK-FAC (sampled-label Fisher)", EKFACSolver(sampled_labels=True), counts),
        ("IF K-FAC", KFACSolver(), counts),
        ("IF K-FAC (sampled-label Fisher)", KFACSolver(sampled_labels=True), counts),
        (f"IF CG λ={damping:g}", ConjugateGradientSolver(damping=damping, tol=1e-3), counts),
        ("IF LiSSA defaults", LiSSASolver(), [1]),
        ("IF LiSSA scale=1 (diverges)", LiSSASolver(scale=1.0), [1]),
    ]
    for name, solver, models_m in solvers:
        rows += bench.ensemble(name, finals, influence(solver, model_of, train, queries), models_m)
    for batch in (64, 512):  # minibatch noise of the curvature estimate, not the depth, limits it
        lissa = lambda c, b=batch: lissa_scores(model_of(c), train, queries, damping,  # noqa: E731
            "gauss_newton", b)  # fmt: skip
        rows += bench.ensemble(f"IF LiSSA λ={damping:g} batch {batch}", finals, lissa, [1])
    tracin = lambda run: TracIn().fit(MLP, run, train).score(queries)  # noqa: E731
    rows += bench.ensemble("TracIn-CP", runs, tracin, counts)
    for segments in args.segments:
        source = Source(segments=segments, eigenbasis=EKFACEigenbasis())
        score = lambda run, s=source: s.fit(MLP, run, train).score(queries)  # noqa: E731
        rows += bench.ensemble(f"Source L={segments} (EK-FAC)", runs, score, counts)
    variants = [("kronfluence EK-FAC", "ekfac", {}), ("kronfluence K-FAC", "kfac", {}),
        ("kronfluence EK-FAC (empirical Fisher)", "ekfac", {"empirical": True})]  # fmt: skip
    return rows + kronfluence_rows(bench, variants, finals, model_of, train, queries, counts)


MNIST_PAIRS = [
    ("IF LiSSA λ=0.01 batch 64", "IF CG λ=0.01"),
    ("IF LiSSA λ=0.01 batch 512", "IF CG λ=0.01"), ("IF LiSSA defaults", "IF CG λ=0.01"),
    ("IF EK-FAC", "IF CG λ=0.01"),
    ("kronfluence EK-FAC", "IF EK-FAC (sampled-label Fisher)"),
    ("kronfluence EK-FAC (empirical Fisher)", "IF EK-FAC"),
    ("kronfluence K-FAC", "IF K-FAC (sampled-label Fisher)"),
    ("Source L=2 (EK-FAC)", "IF EK-FAC (sampled-label Fisher)"),
    ("TracIn-CP", "grad-dot"),
]  # fmt: skip


# ---------------------------------------------------------------- digits + logistic regression


def digits_setup(args):
    """Digits (10 classes, float64), the trained model and the resumable ground truth."""
    splits = load_digits(seed=0)
    train = splits.train.to(dtype=torch.float64)
    queries = splits.test.subset(np.arange(args.digits_queries)).to(dtype=torch.float64)
    masks = sample_subsets(len(train), 0.5, args.digits_subsets, seed=1)
    config = {"model": "LogisticRegression 64-10 float64", "l2": args.digits_l2,
        "objective": "mean cross-entropy + l2/2 |theta|^2 (bias included)",
        "optimizer": "full-batch L-BFGS-B (scipy) from zeros to max|grad| < 1e-8"}  # fmt: skip
    store = GroundTruthStore.create_or_open(args.workspace / "digits_ground_truth", masks, [0],
        queries.fingerprint(), config, train_fingerprint=train.fingerprint())  # fmt: skip
    start = time.perf_counter()
    trained = store.run(LogisticRetrainer(train, queries, args.digits_l2), progress=False)
    info = {**config, "n_train": len(train), "n_queries": len(queries), "subsets": len(masks),
        "seeds": [0], "trained_this_run": trained, "seconds_this_run": _since(start)}  # fmt: skip
    model = fit_logistic_regression(train, args.digits_l2)
    return train, queries, model, (store.masks, store.outputs()), info


def digits_rows(args, bench: Bench, train, queries, model) -> list[dict]:
    """Every method on the one trained LR; damping = the L2 coefficient, so the Gauss-Newton
    curvature (the Hessian, for a linear model) plus damping is the objective's exact Hessian."""
    l2, same = args.digits_l2, lambda member: member  # noqa: E731
    rows = projected_rows(bench, GradientFeaturizer(IdentityProjector()), [model], train,
        queries, [1])  # fmt: skip
    solvers = [
        ("IF explicit", ExplicitSolver(damping=l2)),
        ("IF CG", ConjugateGradientSolver(damping=l2, tol=1e-8, max_iter=2000)),
        ("IF K-FAC", KFACSolver(damping=l2)),
        ("IF K-FAC (sampled-label Fisher)", KFACSolver(damping=l2, sampled_labels=True)),
        ("IF EK-FAC", EKFACSolver(damping=l2)),
        ("IF EK-FAC (sampled-label Fisher)", EKFACSolver(damping=l2, sampled_labels=True)),
    ]
    for name, solver in solvers:
        rows += bench.ensemble(name, [model], influence(solver, same, train, queries), [1])
    lissa = lambda m: lissa_scores(m, train, queries, l2, "gauss_newton", 256)  # noqa: E731
    rows += bench.ensemble("IF LiSSA", [model], lissa, [1])
    variants = [("kronfluence EK-FAC", "ekfac", {"damping": l2}),
        ("kronfluence K-FAC", "kfac", {"damping": l2})]  # fmt: skip
    return rows + kronfluence_rows(bench, variants, [model], plain_linear, train, queries, [1])


DIGITS_PAIRS = [(name, "IF explicit") for name in ("IF CG", "IF LiSSA", "IF K-FAC", "IF EK-FAC",
    "IF EK-FAC (sampled-label Fisher)", "kronfluence EK-FAC", "kronfluence K-FAC",
    "TRAK")]  # fmt: skip


# ---------------------------------------------------------------- output


def table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        if "error" in r:
            cells.append([r["setting"], r["method"], r["models"], f"fails: {r['error']}", "–"])
            continue
        interval = f"{r['lds']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        threads = r.get("threads")
        cells.append([r["setting"], r["method"], r["models"], interval, f"{r['seconds']:.1f}",
                      "?" if threads is None else str(threads)])  # fmt: skip
    header = ["setting", "method", "M", "LDS [95% CI]", "time (s)", "threads"]
    return markdown_table(header, cells)


def agreement_table(pairs: list[dict]) -> str:
    cells = [[p["setting"], p["method"], p["reference"], f"{p['pearson']:.3f}"] for p in pairs]
    return markdown_table(["setting", "method (M = 1)", "vs", "Pearson of scores"], cells)


def settings(args) -> dict:
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return {**flags, "methods": {
        "TRAK / grad-dot": "SparseProjector(k) (MNIST-1D), IdentityProjector (digits); TRAK "
        "damping 0.1 relative (default)",
        "EK-FAC / K-FAC": "defaults on MNIST-1D (empirical Fisher, chosen by held-out LDS in "
        "bench_fisher; damping 0.1 x mean eigenvalue); damping = l2 on digits; '(sampled-label "
        "Fisher)' rows: sampled_labels=True (the true Fisher, the default before bench_fisher)",
        "CG": "tol 1e-3 (MNIST-1D, float32), 1e-8 (digits, float64); Gauss-Newton curvature",
        "LiSSA": "scale = top eigenvalue (30 power iterations), depth for 1% series error; "
        "'defaults' = LiSSASolver(); 'scale=1' shows the divergence check",
        "TracIn / Source": "checkpointed members (same recipe, Adam); Source damping 0",
        "kronfluence": "Analyzer(cpu=True), batch 256, margin measurement, summed CE; damping "
        "default 1e-8 (MNIST-1D), l2 (digits); true Fisher unless 'empirical Fisher'",
    }}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # kronfluence's rows come last: stop now, not after every other row, if it is missing
    require_peer("kronfluence.analyzer", "kronfluence==1.0.1", "bench_methods")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, queries, config, truth, finals, mnist_info = mnist_setup(args)
    runs, mnist_info["checkpointed"] = checkpointed_members(args, train, config, finals)
    bench_lds.warm_up_process(train)
    mnist = Bench("MNIST-1D", truth, args.workspace, args.fresh_scores, {})
    rows = mnist_rows(args, mnist, train, queries, finals, runs)
    ceiling = noise_ceiling(truth[1])
    mnist_info["noise_ceiling"] = {k: getattr(ceiling, k) for k in ("mean", "ci_low", "ci_high")}
    train_d, queries_d, model, truth_d, digits_info = digits_setup(args)
    digits = Bench("digits", truth_d, args.workspace, args.fresh_scores, {})
    rows += digits_rows(args, digits, train_d, queries_d, model)
    pairs = [{"setting": "MNIST-1D", **p} for p in agreements(mnist.first, MNIST_PAIRS)]
    pairs += [{"setting": "digits", **p} for p in agreements(digits.first, DIGITS_PAIRS)]
    results = {"rows": rows, "agreement": pairs, "mnist1d": mnist_info, "digits": digits_info,
        "total_seconds": _since(start), "kronfluence": _version("kronfluence")}  # fmt: skip
    path = output_path("methods", args.quick, args.out)
    write_record(path, "methods", settings(args), args.threads, results)
    print(table(rows) + "\n\n" + agreement_table(pairs))
    print(f"\nnoise ceiling (MNIST-1D): {ceiling}\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
