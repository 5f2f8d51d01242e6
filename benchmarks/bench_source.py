"""Source against EK-FAC influence and TRAK where Source is designed to win (MNIST-1D MLP, SGD).

(a) ``early``: a model stopped before convergence (a few epochs of SGD, one checkpoint per epoch).
(b) ``two-stage``: pre-training on half A of the training set, then fine-tuning on half B, with
checkpoints through both stages. The ground truth retrains the whole pipeline on each subset;
subsets are drawn over A and B together (alpha 0.5 of all examples), so the removal of either
kind is measured. Source runs as the library offers it (``Source(segments=2)`` over all
checkpoints, split at the stage boundary, with the union as its training set), and "staged", with
each stage's own training set (``Source.fit_stages`` with a ``TrainingStage`` per stage); TracIn-CP
likewise, over all checkpoints and over each stage's own examples.

Each setting has its own ground truth (``--subsets`` x ``--gt-seeds``, ``--n-queries`` test
queries), members (seeds 0..M-1) and resumable workspace under ``runs/bench_source[-quick]/``.

Run from the repository root: ``python -m benchmarks.bench_source [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from joblib import Parallel, delayed

from benchmarks import bench_lds
from benchmarks.bench_methods import TASK, Bench, _since, influence, projected_rows, table
from benchmarks.record import REPO_ROOT, available_cores, output_path, write_record
from tda import (
    EKFACSolver,
    Examples,
    GradientFeaturizer,
    GroundTruthStore,
    Source,
    SparseProjector,
    TracIn,
    TrainConfig,
    TrainingStage,
    build_model,
    list_checkpoints,
    load_member,
    load_mnist1d,
    noise_ceiling,
    sample_subsets,
    train,
)
from tda.methods import EKFACEigenbasis
from tda.models import MLP
from tda.outputs import accuracy, task_outputs

QUICK = {"n_train": 400, "n_queries": 20, "subsets": 10, "gt_seeds": 2, "models": [1, 2]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_source", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="minutes-scale smoke run")
    add("--out", help="JSON path (default results/source.json; --quick: runs/quick/)")
    add("--threads", type=int, default=available_cores(), help="torch threads")
    add("--workers", type=int, default=2, help="ground-truth joblib workers (1 thread each)")
    add("--workspace", type=Path, help="default runs/bench_source[-quick]")
    add("--fresh-scores", action="store_true", help="recompute every cached score matrix")
    add("--n-train", type=int, default=4000)
    add("--n-queries", type=int, default=100)
    add("--subsets", type=int, default=50)
    add("--gt-seeds", type=int, default=2)
    add("--models", type=int, nargs="+", default=[1, 5])
    add("--dim", type=int, default=2048, help="TRAK's sparse JL dimension")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.workspace is None:
        name = "bench_source-quick" if args.quick else "bench_source"
        args.workspace = REPO_ROOT / "runs" / name
    return args


def sgd(rate: float, epochs: int, checkpoints: int) -> TrainConfig:
    """Plain SGD (Source's and TracIn's assumption), batch 64."""
    return TrainConfig(epochs, optimizer=partial(torch.optim.SGD, lr=rate), checkpoints=checkpoints)


EARLY = sgd(0.1, 4, 4)  # stopped well before convergence
# as many checkpoints in each stage, so that Source(segments=2) splits at the stage boundary
PRETRAIN, FINETUNE = sgd(0.1, 10, 4), sgd(0.05, 4, 4)
SEGMENTS = (1, 2, 4)


# ---------------------------------------------------------------- the two training pipelines


@dataclass(frozen=True)
class Pipeline:
    """One or two training stages over disjoint parts of ``train`` (index arrays)."""

    name: str
    train: Examples
    stages: tuple[tuple[np.ndarray, TrainConfig], ...]

    def run(self, mask: np.ndarray, seed: int, directory: Path | None = None):
        """Train a fresh model (seed) through every stage on the masked examples; the model and
        its checkpoints, renamed and renumbered to one increasing sequence across stages."""
        model, stages = build_model(MLP, seed), []
        for stage, (indices, config) in enumerate(self.stages):
            data = self.train.subset(indices[mask[indices]])
            folder = None if directory is None else directory / f"stage-{stage}"
            result = train(model, data, config, seed=seed + 7919 * stage, checkpoint_dir=folder)
            stages.append(result.checkpoints)
        return model, chain(stages)

    def measure(self, queries: Examples, mask: np.ndarray, seed: int) -> np.ndarray:
        """Ground-truth ``measure``: query margins of the pipeline retrained on the subset."""
        model, _ = self.run(np.asarray(mask), seed)
        return task_outputs(model, TASK, queries).double().numpy()


def chain(stages: list[list]) -> list:
    """The stages' checkpoints as one series in training order (steps offset, ids prefixed)."""
    series, steps = [], 0
    for stage, saved in enumerate(stages):
        series += [replace(c, step=c.step + steps, checkpoint_id=f"{stage}.{c.checkpoint_id}")
            for c in saved]  # fmt: skip
        steps += sum(c.segment_steps for c in saved)
    return series


def pipelines(train: Examples) -> list[Pipeline]:
    first, second = np.arange(len(train) // 2), np.arange(len(train) // 2, len(train))
    return [
        Pipeline("early", train, ((np.arange(len(train)), EARLY),)),
        Pipeline("two-stage", train, ((first, PRETRAIN), (second, FINETUNE))),
    ]


def describe(pipeline: Pipeline) -> dict:
    return {"stages": [{"examples": [int(i[0]), int(i[-1]) + 1], "epochs": c.epochs,
        "optimizer": f"SGD lr {c.optimizer.keywords['lr']}", "batch_size": c.batch_size}
        for i, c in pipeline.stages]}  # fmt: skip


# ---------------------------------------------------------------- ground truth and members


def ground_truth(args, pipeline: Pipeline, queries: Examples):
    """Masks and outputs ``[m, seeds, q]`` of the pipeline, training only the missing pairs."""
    masks = sample_subsets(len(pipeline.train), 0.5, args.subsets, seed=1)
    seeds = [1000 + s for s in range(args.gt_seeds)]
    config = {"pipeline": pipeline.name, **describe(pipeline), "model": "MLP 40-128-128-10"}
    store = GroundTruthStore.create_or_open(args.workspace / pipeline.name / "ground_truth",
        masks, seeds, queries.fingerprint(), config,
        train_fingerprint=pipeline.train.fingerprint())  # fmt: skip
    todo = sorted({subset for subset, _ in store.missing()})
    start = time.perf_counter()
    measure = partial(pipeline.measure, queries)
    # a resumed subset may have some seeds recorded already: count what the workers trained
    trained = Parallel(n_jobs=args.workers)(delayed(_record)(store, measure, s) for s in todo)
    info = {"seeds": seeds, "subsets": len(masks), "subsets_drawn_over": "all stages",
        "trained_this_run": sum(trained), "seconds_this_run": _since(start)}  # fmt: skip
    return (store.masks, store.outputs()), info


def _record(store: GroundTruthStore, measure, subset: int) -> int:
    torch.set_num_threads(1)  # workers share the cores
    return store.run(measure, [subset], progress=False)


def members(args, pipeline: Pipeline, queries: Examples) -> tuple[list[list], dict]:
    """Checkpoint series of members 0..M-1 (trained once, then read from disk)."""
    full, runs, accuracies = np.ones(len(pipeline.train), dtype=bool), [], []
    for seed in range(max(args.models)):
        directory = args.workspace / pipeline.name / "models" / f"seed-{seed}"
        if not (directory / "done").exists():
            pipeline.run(full, seed, directory)
            (directory / "done").touch()
        runs.append(chain([list_checkpoints(f) for f in sorted(directory.glob("stage-*"))]))
        model = load_member(MLP, runs[-1][-1])
        accuracies.append([accuracy(model, pipeline.train), accuracy(model, queries)])
    return runs, {"train_and_query_accuracy": accuracies, "checkpoints": len(runs[0])}


# ---------------------------------------------------------------- staged Source


def training_stages(series: list, pipeline: Pipeline) -> list[TrainingStage]:
    """The member's checkpoint series cut back into its stages, each with its examples."""
    sizes = [len(config.checkpoint_epochs()) for _, config in pipeline.stages]
    bounds = np.cumsum([0, *sizes])
    return [
        TrainingStage(series[bounds[index] : bounds[index + 1]], indices)
        for index, (indices, _) in enumerate(pipeline.stages)
    ]


def staged(attributor, pipeline: Pipeline, queries: Examples):
    """``series -> scores`` of ``attributor.fit_stages`` over the member's stages."""

    def score(series: list):
        stages = training_stages(series, pipeline)
        return attributor.fit_stages(MLP, stages, pipeline.train).score(queries)

    return score


# ---------------------------------------------------------------- rows


def setting_rows(args, pipeline: Pipeline, queries: Examples, truth, runs) -> list[dict]:
    bench = Bench(pipeline.name, truth, args.workspace, args.fresh_scores, {})
    data = pipeline.train
    model_of = lambda series: load_member(MLP, series[-1])  # noqa: E731
    models = [model_of(series) for series in runs]
    featurizer = GradientFeaturizer(SparseProjector(args.dim))
    rows = projected_rows(bench, featurizer, models, data, queries, args.models)
    rows += bench.ensemble("IF EK-FAC", runs, influence(EKFACSolver(), model_of, data, queries),
        args.models)  # fmt: skip
    for segments in SEGMENTS:
        source = Source(segments=segments, eigenbasis=EKFACEigenbasis())
        score = lambda series, s=source: s.fit(MLP, series, data).score(queries)  # noqa: E731
        rows += bench.ensemble(f"Source L={segments}", runs, score, args.models)
    tracin = lambda series: TracIn().fit(MLP, series, data).score(queries)  # noqa: E731
    rows += bench.ensemble("TracIn-CP", runs, tracin, args.models)
    if len(pipeline.stages) > 1:
        source = Source(segments=1, eigenbasis=EKFACEigenbasis())
        rows += bench.ensemble("Source staged (per-stage data)", runs,
            staged(source, pipeline, queries), args.models)  # fmt: skip
        rows += bench.ensemble("TracIn-CP staged (per-stage data)", runs,
            staged(TracIn(), pipeline, queries), args.models)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    n_test = -(-args.n_queries // 10) * 10
    splits = load_mnist1d(args.n_train, n_test, seed=0)
    queries = splits.test.subset(np.arange(args.n_queries))
    bench_lds.warm_up_process(splits.train)
    rows, details = [], {}
    for pipeline in pipelines(splits.train):
        truth, info = ground_truth(args, pipeline, queries)
        runs, info["members"] = members(args, pipeline, queries)
        ceiling = noise_ceiling(truth[1])
        info["noise_ceiling"] = {k: getattr(ceiling, k) for k in ("mean", "ci_low", "ci_high")}
        details[pipeline.name] = {**describe(pipeline), **info}
        rows += setting_rows(args, pipeline, queries, truth, runs)
        print(f"{pipeline.name}: noise ceiling {ceiling}", file=sys.stderr)
    results = {"rows": rows, "settings": details, "total_seconds": time.perf_counter() - start}
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = output_path("source", args.quick, args.out)
    write_record(path, "source", flags, args.threads, results)
    print(table(rows))
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
