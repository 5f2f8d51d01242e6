"""TRAK's damped kernel in the primal (k x k) and dual (n x n) forms, where k > n.

Random float32 features of ``n`` training and 100 query rows in a FeatureStore (one checkpoint),
for each projection size ``k``: seconds to fit :class:`~tda.methods.DampedKernel` and score the
queries (``TRAK.score``'s solve and product) in each form, the median of ``repeats``, and the
largest relative difference between the two score matrices. Same process, same data.

Run from the repository root: ``python -m benchmarks.bench_trak_kernel [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from benchmarks.record import available_cores, markdown_table, output_path, write_record
from tda.methods import DampedKernel
from tda.methods.base import train_product
from tda.store import FeatureStore

FULL = {"n": 1000, "dims": [2048, 4096, 8192, 16384], "repeats": 3}
QUICK = {"n": 200, "dims": [512, 1024], "repeats": 1}
QUERIES, DAMPING = 100, 0.1


def synthetic_store(root: str, n: int, dim: int) -> tuple[FeatureStore, torch.Tensor]:
    """One checkpoint's random training features ``[n, dim]`` and query features ``[100, dim]``."""
    generator = np.random.default_rng(dim)
    store = FeatureStore.open(root, {"featurizer": "synthetic", "dim": dim})
    store.register_checkpoint("m0", "synthetic")
    store.declare_split("train", n, "synthetic")
    features = generator.standard_normal((n, dim), dtype=np.float32)
    store.write_shard("m0", "train", 0, 0, {"features": features})
    queries = generator.standard_normal((QUERIES, dim), dtype=np.float32)
    return store, torch.from_numpy(queries).double()


def timed(store: FeatureStore, queries: torch.Tensor, dual: bool) -> tuple[float, torch.Tensor]:
    """Seconds to fit the kernel and score the queries, and the scores."""
    start = time.perf_counter()
    kernel = DampedKernel.fit(store, "m0", "train", None, DAMPING, dual=dual)
    scores = train_product(store, "m0", "train", kernel.solve_rows(queries))
    return time.perf_counter() - start, scores


def measure(n: int, dim: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as root:
        store, queries = synthetic_store(root, n, dim)
        runs = {"primal": [], "dual": []}
        for _ in range(repeats):
            for form in runs:
                runs[form].append(timed(store, queries, dual=form == "dual"))
    primal, dual = (statistics.median(s for s, _ in runs[f]) for f in ("primal", "dual"))
    a, b = runs["primal"][0][1], runs["dual"][0][1]
    difference = float((a - b).abs().max() / a.abs().max())
    return {"k": dim, "primal_s": primal, "dual_s": dual, "speedup": primal / dual,
            "max_relative_difference": difference}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run")
    parser.add_argument(
        "--out", help="JSON path (default results/trak-kernel.json; --quick: runs/quick/)"
    )
    args = parser.parse_args(argv)
    settings = {**(QUICK if args.quick else FULL), "queries": QUERIES, "damping": DAMPING}
    threads = min(2, available_cores())
    torch.set_num_threads(threads)
    rows = [measure(settings["n"], dim, settings["repeats"]) for dim in settings["dims"]]
    header = ["k", "n", "primal (s)", "dual (s)", "speed-up", "max rel. difference"]
    table = [
        [r["k"], settings["n"], f"{r['primal_s']:.2f}", f"{r['dual_s']:.3f}",
         f"{r['speedup']:.0f}x", f"{r['max_relative_difference']:.1e}"]
        for r in rows
    ]  # fmt: skip
    print(markdown_table(header, table))
    write_record(
        output_path("trak-kernel", args.quick, args.out), "trak_kernel", settings, threads, rows
    )


if __name__ == "__main__":
    main(sys.argv[1:])
