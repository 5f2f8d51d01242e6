"""Featurization throughput on the MNIST-1D MLP (40-128-128-10, 23,050 parameters), one process.

Measures, for n examples and projection size k: (1) examples/s of per-sample output gradients +
projection (+ TRAK's out-to-loss weight), ours and traker 0.3.2's CPU path, warm caches, with the
first call's cost reported apart; (2) the dense projection alone in GFLOP/s beside a plain fp32
``torch.mm`` of the same shapes; (3) the peak RSS of a featurization into a FeatureStore at n and
4n, each in a fresh subprocess. Inputs are random (speed does not depend on the values).

Run from the repository root: ``python -m benchmarks.bench_throughput [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.record import (
    REPO_ROOT,
    available_cores,
    markdown_table,
    output_path,
    require_peer,
    write_record,
)
from tda import DenseProjector, Examples, GradientFeaturizer, SparseProjector, build_model
from tda.features import featurize, open_feature_store
from tda.models import MLP

try:  # written by another engineer; benchmarked when present
    from tda.features.kronecker import KroneckerFeaturizer
except ImportError:
    KroneckerFeaturizer = None

CHUNK = 256  # examples per vectorised gradient call, ours (the default) and traker's alike
QUICK = {"sizes": [256, 1024], "dims": [128], "repeats": 1, "rss_n": 1000}

Run = Callable[[Tensor, Tensor], object]  # featurize (inputs, targets) with warm caches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Full-scale defaults; ``--quick`` swaps in QUICK for every flag not given explicitly."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_throughput", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="seconds-scale smoke run")
    add("--out", help="JSON path (default results/throughput.json; --quick: runs/quick/)")
    add("--threads", type=int, default=available_cores(), help="torch threads")
    add("--sizes", type=int, nargs="+", default=[1000, 4000, 16000], help="numbers n of examples")
    add("--dims", type=int, nargs="+", default=[512, 2048], help="projection sizes k")
    add("--repeats", type=int, default=3, help="timed runs per cell (the median is kept)")
    add("--rss-n", type=int, default=4000, help="peak RSS is measured at this n and 4n")
    add("--projection-batch", type=int, default=CHUNK, help="rows b of x [b, p]")
    add("--seed", type=int, default=0)
    add("--rss-child", type=int, help=argparse.SUPPRESS)  # internal: one RSS measurement
    add("--rss-k", type=int, default=2048, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def random_examples(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """MNIST-1D-shaped inputs ``[n, 40]`` and targets ``[n]`` in 10 classes."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 40, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def our_candidates(model: nn.Module, k: int) -> dict[str, Callable[[], Run]]:
    """Fresh (cold) featurizers of ours for projection size ``k``, by name."""
    featurizers = {
        "ours: Dense": lambda: GradientFeaturizer(DenseProjector(k)),
        "ours: Sparse (s=4)": lambda: GradientFeaturizer(SparseProjector(k)),
    }
    if KroneckerFeaturizer is not None:
        featurizers["ours: Kronecker"] = lambda: KroneckerFeaturizer(dim=k, structure="kronecker")
        featurizers["ours: Khatri-Rao"] = lambda: KroneckerFeaturizer(dim=k, structure="khatri_rao")

    return {name: (lambda make=make: _bound(model, make())) for name, make in featurizers.items()}


def _bound(model: nn.Module, featurizer) -> Run:
    return lambda inputs, targets: featurizer(model, inputs, targets)


def traker_run(model: nn.Module, k: int, block_size: int) -> Run:
    """traker's featurize step without its memmap writes: gradients, projection, Q (fp32, CPU)."""
    from trak.gradient_computers import FunctionalGradientComputer
    from trak.modelout_functions import ImageClassificationModelOutput
    from trak.projectors import BasicProjector, ProjectionType

    p = sum(parameter.numel() for parameter in model.parameters())
    computer = FunctionalGradientComputer(
        model, ImageClassificationModelOutput(), grad_dim=p, dtype=torch.float32, device="cpu"
    )
    projector = BasicProjector(
        grad_dim=p,
        proj_dim=k,
        seed=0,
        proj_type=ProjectionType.normal,
        device="cpu",
        block_size=block_size,
        dtype=torch.float32,
    )
    scale = math.sqrt(p)  # TRAKer divides projected gradients by sqrt(p)

    def run(inputs: Tensor, targets: Tensor) -> list:
        parts = []
        for start in range(0, len(inputs), CHUNK):
            batch = (inputs[start : start + CHUNK], targets[start : start + CHUNK])
            gradients = computer.compute_per_sample_grad(batch=batch)
            features = projector.project(gradients, model_id=0) / scale
            parts.append((features, computer.compute_loss_grad(batch)))
        return parts

    return run


def traker_candidates(model: nn.Module, k: int) -> dict[str, Callable[[], Run]]:
    return {
        "traker: BasicProjector block 100": lambda: traker_run(model, k, 100),
        f"traker: BasicProjector block {k}": lambda: traker_run(model, k, k),
    }


def seconds(call: Callable[..., object], repeats: int, *arguments) -> list[float]:
    """Wall time of ``repeats`` calls of ``call(*arguments)``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(*arguments)
        times.append(time.perf_counter() - start)
    return times


def warm_up_process(candidates: dict[str, Callable[[], Run]]) -> None:
    """Run throwaway instances once, so one-time costs of the process (lazy imports, first
    ``torch.func`` call, allocator growth) are not charged to whichever candidate runs first."""
    inputs, targets = random_examples(8, seed=12345)
    for make in candidates.values():
        make()(inputs, targets)


def measure_candidate(name, make, k, sizes, repeats, seed) -> list[dict]:
    """First-call cost (construction + first chunk, cold) and warm examples/s at each size."""
    first_inputs, first_targets = random_examples(CHUNK, seed)
    start = time.perf_counter()
    run = make()
    run(first_inputs, first_targets)
    first_call = time.perf_counter() - start
    run(first_inputs, first_targets)  # warm-up: everything cached is now built
    rows = []
    for n in sizes:
        inputs, targets = random_examples(n, seed)
        times = seconds(run, repeats, inputs, targets)
        rate = n / statistics.median(times)
        rows.append(
            {
                "method": name,
                "k": k,
                "n": n,
                "seconds": times,
                "examples_per_s": rate,
                "first_call_s": first_call,
            }
        )
        print(f"  {name:36s} k={k:5d} n={n:6d} {rate:10.0f} ex/s", file=sys.stderr)
    return rows


def measure_projection(k: int, batch: int, p: int, repeats: int, seed: int) -> list[dict]:
    """Dense projection alone: ``x [b, p] @ P [p, k]`` in GFLOP/s (2bpk / time), warm."""
    from trak.projectors import BasicProjector, ProjectionType

    x = torch.randn(batch, p, generator=torch.Generator().manual_seed(seed))
    matrix = torch.randn(p, k, generator=torch.Generator().manual_seed(seed + 1))
    dense = DenseProjector(k)
    calls = {
        "torch.mm fp32 (peak)": lambda: torch.mm(x, matrix),
        "ours: Dense": lambda: dense.project(x),
    }
    for block in (100, k):
        projector = BasicProjector(
            grad_dim=p,
            proj_dim=k,
            seed=0,
            proj_type=ProjectionType.normal,
            device="cpu",
            block_size=block,
            dtype=torch.float32,
        )
        calls[f"traker: BasicProjector block {block}"] = lambda projector=projector: (
            projector.project(x, model_id=0)
        )
    rows = []
    for name, call in calls.items():
        call()  # warm-up: builds cached matrices
        median = statistics.median(seconds(call, max(5, repeats)))
        rows.append(
            {
                "projection": name,
                "k": k,
                "b": batch,
                "p": p,
                "seconds": median,
                "gflops": 2 * batch * p * k / median / 1e9,
            }
        )
    peak = rows[0]["gflops"]
    for row in rows:
        row["fraction_of_mm"] = row["gflops"] / peak
    return rows


def high_water_mark_mib() -> float:
    """Peak resident set size of this process (VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource  # not Linux: ru_maxrss (KiB on Linux-likes, bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(n: int, k: int, seed: int) -> dict:
    """One featurization of n examples into a fresh FeatureStore; peak RSS before and after."""
    model = build_model(MLP, seed)
    examples = Examples(*random_examples(n, seed))
    featurizer = GradientFeaturizer(DenseProjector(k))
    before = high_water_mark_mib()
    with tempfile.TemporaryDirectory() as root:
        store = open_feature_store(root, featurizer)
        featurize(model, {"train": examples}, featurizer, store, checkpoint_id="m0", progress=False)
    return {"n": n, "k": k, "baseline_peak_mib": before, "peak_mib": high_water_mark_mib()}


def measure_rss(n: int, k: int, threads: int, seed: int) -> list[dict]:
    """Peak RSS of featurizing n and 4n examples, each in a fresh interpreter."""
    rows = []
    for size in (n, 4 * n):
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_throughput",
            "--rss-child",
            str(size),
            "--rss-k",
            str(k),
            "--threads",
            str(threads),
            "--seed",
            str(seed),
        ]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def tables(results: dict, sizes: list[int]) -> str:
    cells = {}
    for row in results["featurize"]:
        cells.setdefault((row["method"], row["k"]), {"first": row["first_call_s"]})[row["n"]] = row[
            "examples_per_s"
        ]
    featurize_rows = [
        [method, k, *(f"{values[n]:,.0f}" for n in sizes), f"{values['first']:.2f}"]
        for (method, k), values in cells.items()
    ]
    projection_rows = [
        [
            r["projection"],
            r["k"],
            f"{1e3 * r['seconds']:.1f}",
            f"{r['gflops']:.1f}",
            f"{100 * r['fraction_of_mm']:.0f}%",
        ]
        for r in results["projection"]
    ]
    rss_rows = [
        [r["n"], r["k"], f"{r['baseline_peak_mib']:.0f}", f"{r['peak_mib']:.0f}"]
        for r in results["peak_rss"]
    ]
    return "\n\n".join(
        [
            markdown_table(
                ["featurizer", "k", *(f"n={n} (ex/s)" for n in sizes), "first call (s)"],
                featurize_rows,
            ),
            markdown_table(
                ["projection [b, p] @ [p, k]", "k", "ms", "GFLOP/s", "of torch.mm"], projection_rows
            ),
            markdown_table(
                ["n", "k", "peak RSS before featurize (MiB)", "peak RSS after (MiB)"], rss_rows
            ),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child, args.rss_k, args.seed)))
        return
    require_peer("trak", "traker==0.3.2", "bench_throughput")
    model = build_model(MLP, args.seed).eval()
    p = sum(parameter.numel() for parameter in model.parameters())
    results = {"featurize": [], "projection": [], "peak_rss": []}
    for k in args.dims:
        candidates = {**our_candidates(model, k), **traker_candidates(model, k)}
        warm_up_process(candidates)
        for name, make in candidates.items():
            results["featurize"] += measure_candidate(
                name, make, k, args.sizes, args.repeats, args.seed
            )
        results["projection"] += measure_projection(
            k, args.projection_batch, p, args.repeats, args.seed
        )
    results["peak_rss"] = measure_rss(args.rss_n, max(args.dims), args.threads, args.seed)
    settings = {
        key: getattr(args, key)
        for key in ("quick", "sizes", "dims", "repeats", "rss_n", "projection_batch", "seed")
    }
    settings.update(
        model="MLP 40-128-128-10",
        parameters=p,
        chunk_size=CHUNK,
        kronecker_available=KroneckerFeaturizer is not None,
    )
    path = output_path("throughput", args.quick, args.out)
    write_record(path, "throughput", settings, args.threads, results)
    print(tables(results, args.sizes))
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
