"""LDS of the NTK-surrogate attribution on bench_lds's MNIST-1D ground truth, beside TRAK.

``NTKSurrogate`` is scored like every other attributor: ``fit(model, train)`` then
``score(queries)`` ``[q, n]`` on each member, averaged over the first M members, and measured with
``tda.eval.lds`` against ``bench_lds``'s ground truth (100 subsets x 3 seeds, alpha 0.5, subset
seed 1, 200 queries, 4000 training examples), opened from ``runs/bench_lds`` as it is (the members
0..M-1 and the ground truth are rebuilt through ``bench_lds``'s functions only if absent).

Kernels: the library default (trace NTK) cannot be exact here: its features are ``10 * p`` =
230,500 wide, 3.7 GB in float32 for 4000 examples, above ``bench_ntk``'s 3 GiB limit
(``KernelTooLargeError``), so the trace NTK is JL-projected with ``bench_ntk``'s largest projection
(``SparseProjector(2048, nonzeros=4, seed=0)``, features 20,480 wide); the exact pseudo-NTK
(23,050 wide, the most faithful kernel in ``results/ntk.json``) fits and is run beside it.
Machines: ``KernelLogisticRegression()`` (the default: C = 10, L-BFGS up to 2000 iterations) and
``KernelSVM()`` (one-vs-rest, C = 1), both fitted to the network's predictions as in
``bench_ntk``. Reference: TRAK (sparse 2048, default damping) from the score matrices
``bench_methods``/``bench_combined`` cached under ``runs/bench_methods`` (not recomputed; the
seconds they recorded are reported).

Each (configuration, member) score matrix is kept in ``runs/bench_ntk_lds/scores`` with its
seconds, so an interrupted run resumes. Times: ``fit_s`` = training kernel + machine fit
(``NTKSurrogate.fit``), of which ``machine_fit_s`` is the scikit-learn fit; ``score_s`` = query
kernel rows + decomposition (``score``); summed over the M members.

Run from the repository root: ``python -m benchmarks.bench_ntk_lds [--models 1 5]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_lds
from benchmarks.bench_combined import trak_scores_path
from benchmarks.bench_methods import cached
from benchmarks.record import REPO_ROOT, available_cores, markdown_table, output_path, write_record
from tda import SparseProjector, TrainConfig, lds, load_member, noise_ceiling
from tda.models import MLP
from tda.ntk import EmpiricalNTK, KernelLogisticRegression, KernelSVM, NTKSurrogate

MEMORY_LIMIT = 3 * 2**30  # bench_ntk's
TRAK_WORKSPACE = REPO_ROOT / "runs" / "bench_methods"  # bench_combined's TRAK scores, k = 2048


def kernels() -> dict[str, EmpiricalNTK]:
    projector = SparseProjector(2048, nonzeros=4, seed=0)
    return {
        "trace-proj2048": EmpiricalNTK("trace", projector, memory_limit_bytes=MEMORY_LIMIT),
        "pseudo": EmpiricalNTK("pseudo", memory_limit_bytes=MEMORY_LIMIT),
    }


MACHINES = {"KLR": KernelLogisticRegression, "SVM": KernelSVM}


class TimedMachine:
    """Delegates ``fit`` to a kernel machine and records how long scikit-learn took."""

    def __init__(self, machine) -> None:
        self.machine, self.seconds = machine, 0.0

    def fit(self, gram, labels, num_classes):
        start = time.perf_counter()
        fitted = self.machine.fit(gram, labels, num_classes)
        self.seconds = time.perf_counter() - start
        return fitted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ntk_lds", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--out", help="JSON path (default results/ntk-lds.json)")
    add("--threads", type=int, default=available_cores(), help="torch threads")
    add("--workspace", type=Path, default=REPO_ROOT / "runs" / "bench_ntk_lds")
    add("--kernels", nargs="+", default=list(kernels()), choices=list(kernels()))
    add("--machines", nargs="+", default=list(MACHINES), choices=list(MACHINES))
    add("--models", type=int, nargs="+", default=[1, 5], help="ensemble sizes M")
    add(
        "--m5-configs",
        nargs="*",
        default=[f"{k} {m}" for k in kernels() for m in MACHINES],
        help="configurations ('kernel machine') also run for M > 1 (the rest: M = 1 only)",
    )
    return parser.parse_args(argv)


def score_member(kernel: EmpiricalNTK, machine_name: str, checkpoint, train, queries):
    """Scores ``[q, n]`` of one member and the split of its seconds."""
    model = load_member(MLP, checkpoint)
    timed = TimedMachine(MACHINES[machine_name]())
    start = time.perf_counter()
    surrogate = NTKSurrogate(kernel=kernel, machine=timed).fit(model, train, progress=False)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = surrogate.score(queries).double().numpy()
    score_s = time.perf_counter() - start
    report = surrogate.faithfulness(queries).as_dict()  # on the 200 queries (held out)
    info = {"fit_s": fit_s, "machine_fit_s": timed.seconds, "score_s": score_s,
            "faithfulness_on_queries": report}  # fmt: skip
    return scores, info


def lds_row(name: str, count: int, scores: np.ndarray, truth, **extra) -> dict:
    result = lds(scores, *truth)
    return {"method": name, "models": count, "lds": result.mean, "ci_low": result.ci_low,
            "ci_high": result.ci_high, "n_excluded": result.n_excluded, **extra}  # fmt: skip


def ntk_rows(args, finals, train, queries, truth) -> list[dict]:
    rows = []
    counts = sorted(args.models)
    for kernel_name in args.kernels:
        kernel = kernels()[kernel_name]
        for machine_name in args.machines:
            config = f"{kernel_name} {machine_name}"
            wanted = counts if config in args.m5_configs else [1]
            total, infos = None, []
            for index, checkpoint in enumerate(finals[: max(wanted)]):
                path = args.workspace / "scores" / config.replace(" ", "_") / f"model-{index}.npz"
                compute = lambda c=checkpoint, k=kernel, m=machine_name: score_member(  # noqa: E731
                    k, m, c, train, queries
                )
                scores, seconds, info = cached(path, compute, False)
                infos.append({**info, "seconds": seconds})
                total = scores if total is None else total + scores
                print(f"{config} member {index}: {json.dumps(_brief(info))}", flush=True)
                if index + 1 in wanted:
                    times = {key: sum(i[key] for i in infos) for key in ("fit_s", "score_s")}
                    times["machine_fit_s"] = sum(i["machine_fit_s"] for i in infos)
                    row = lds_row(f"NTK surrogate {config}", index + 1, total / (index + 1),
                                  truth, **times, members=list(infos))  # fmt: skip
                    rows.append(row)
                    print(_line(row), flush=True)
    return rows


def trak_rows(counts, truth) -> list[dict]:
    """TRAK (sparse 2048) from bench_combined's cache, where present (a missing one is named)."""
    rows = []
    for count in counts:
        path = trak_scores_path(TRAK_WORKSPACE, 2048, count)
        if not path.exists():
            print(f"skipped TRAK M={count}: no cached scores at {path} (run bench_combined first)")
            continue
        saved = np.load(path)
        seconds = float(saved["seconds"])
        source = str(path.relative_to(REPO_ROOT))
        rows.append(lds_row("TRAK sparse 2048 (cached)", count, saved["scores"], truth,
                            cached_seconds=seconds, source=source))  # fmt: skip
        print(_line(rows[-1]), flush=True)
    return rows


def _brief(info: dict) -> dict:
    tau = info["faithfulness_on_queries"]
    return {"fit_s": round(info["fit_s"], 1), "machine_fit_s": round(info["machine_fit_s"], 1),
            "score_s": round(info["score_s"], 1), "tau": round(tau["kendall_tau"], 3),
            "agreement": tau["agreement"]}  # fmt: skip


def _line(row: dict) -> str:
    return (
        f"{row['method']} M={row['models']}: LDS {row['lds']:.3f} "
        f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    )


def table(rows: list[dict]) -> str:
    def seconds(r):
        if "fit_s" in r:
            return f"{r['fit_s']:.0f} (machine {r['machine_fit_s']:.0f}) + {r['score_s']:.1f}"
        return f"{r['cached_seconds']:.1f} (cached)"

    cells = [
        [r["method"], r["models"], f"{r['lds']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
         seconds(r)]
        for r in rows
    ]  # fmt: skip
    return markdown_table(["method", "M", "LDS [95% CI]", "fit + score (s)"], cells)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lds_args = bench_lds.parse_args([])
    train, queries = bench_lds.load_data(lds_args)
    config = TrainConfig(epochs=lds_args.epochs)
    masks, outputs, ground = bench_lds.ground_truth(lds_args, train, queries, config)
    members, training = bench_lds.train_members(lds_args, train, config)
    finals = [checkpoint for _, checkpoint in members]
    truth = (masks, outputs)
    rows = trak_rows(sorted(args.models), truth)
    rows += ntk_rows(args, finals, train, queries, truth)
    ceiling = noise_ceiling(outputs)
    settings = {
        **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "ground_truth_workspace": str(lds_args.workspace.relative_to(REPO_ROOT)),
        "recipe": bench_lds.recipe(lds_args),
        "member_seeds": training["seeds"][: max(args.models)],
        "ground_truth_seeds": ground["seeds"],
        "subset_seed": lds_args.subset_seed,
        "n_queries": lds_args.n_queries,
        "kernels": {
            "trace-proj2048": "EmpiricalNTK('trace', SparseProjector(2048, nonzeros=4, seed=0)); "
            "exact trace NTK needs 3.7 GB of features for 4000 examples > 3 GiB limit",
            "pseudo": "EmpiricalNTK('pseudo'), exact",
        },
        "machines": {
            "KLR": "KernelLogisticRegression(inverse_regularization=10, max_iter=2000)",
            "SVM": "KernelSVM(inverse_regularization=1), one-vs-rest",
        },
        "memory_limit_bytes": MEMORY_LIMIT,
    }
    results = {
        "rows": rows,
        "noise_ceiling": {k: getattr(ceiling, k) for k in ("mean", "ci_low", "ci_high")},
        "ground_truth": ground,
        "total_seconds": time.perf_counter() - start,
        "timing_note": "fit_s / machine_fit_s / score_s were measured when each member's score "
        "matrix was computed (kept in the workspace); total_seconds is this invocation only",
    }
    path = output_path("ntk-lds", False, args.out)
    write_record(path, "ntk-lds", settings, args.threads, results)
    print(table(rows))
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
