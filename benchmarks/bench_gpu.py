"""The same workloads on the CPU and on CUDA, in one process on one machine (``device=auto``).

Workloads on MNIST-1D (4000 training examples), each timed on every device the machine has:
featurization (per-sample output gradients + projection to k, TRAK's weight; MLP 40-128-128-10 and
the CNN), training one model (30 epochs, batch 64, Adam), an unlearning request (SalUn, 10 epochs,
forget a random 10%) and influence functions with EK-FAC (fit on the training set, score 100
queries). Data stays in host memory and each batch moves to the model's device, as in the library.
Times are medians of ``--repeats`` runs after a warm-up run; CUDA work is synchronised before each
clock read.

Run from the repository root: ``python -m benchmarks.bench_gpu [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

import unlearn
from benchmarks.record import available_cores, markdown_table, output_path, write_record
from tda import DenseProjector, GradientFeaturizer, SparseProjector, build_model, load_mnist1d
from tda.curvature import EKFACSolver
from tda.device import on_device
from tda.methods import InfluenceFunction
from tda.models import MLP, CNN1d
from tda.training import TrainConfig, train

MODELS = {"MLP": MLP, "CNN": CNN1d}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_gpu", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="seconds-scale smoke run (n=400, 2 epochs)")
    add("--out", help="JSON path (default results/gpu.json; --quick: runs/quick/)")
    add("--threads", type=int, default=available_cores(), help="torch CPU threads")
    add("--dim", type=int, default=2048, help="projection size k")
    add("--repeats", type=int, default=3, help="timed runs per cell (the median is kept)")
    return parser.parse_args(argv)


def seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall-clock seconds of ``work`` after one warm-up run."""

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def workloads(data, config: TrainConfig, dim: int) -> dict[str, Callable]:
    """Name -> (device -> zero-argument work) for every workload."""
    train_set, queries = data.train, data.test.subset(range(100))
    forget = list(range(0, len(train_set), 10))
    request = unlearn.UnlearningRequest(forget, train_size=len(train_set), seed=0)

    def trained(name, device):
        return train(build_model(on_device(MODELS[name], device), 0), train_set, config).model

    def featurize(name, projector, device):
        model, featurizer = trained(name, device), GradientFeaturizer(projector(dim=dim))
        return lambda: featurizer(model, train_set.inputs, train_set.targets)

    def unlearning(device):
        model, salun = trained("MLP", device), unlearn.SalUn()
        return lambda: unlearn.Unlearner(salun, compute_metrics=False).unlearn(
            model, train_set, request
        )

    def influence(name, device):
        model = trained(name, device)
        return lambda: InfluenceFunction(EKFACSolver()).fit(model, train_set).score(queries)

    return {
        f"featurize MLP, dense k={dim}": partial(featurize, "MLP", DenseProjector),
        f"featurize MLP, sparse k={dim}": partial(featurize, "MLP", SparseProjector),
        f"featurize CNN, dense k={dim}": partial(featurize, "CNN", DenseProjector),
        f"train MLP ({config.epochs} epochs)": lambda d: lambda: trained("MLP", d),
        f"train CNN ({config.epochs} epochs)": lambda d: lambda: trained("CNN", d),
        "unlearn (SalUn, 10% forget)": unlearning,
        "IF EK-FAC fit + 100 queries, MLP": partial(influence, "MLP"),
        "IF EK-FAC fit + 100 queries, CNN (convolutions too)": partial(influence, "CNN"),
    }


def devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    return found + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.quick and not torch.cuda.is_available():
        raise SystemExit("bench_gpu compares the CPU with CUDA: this machine has no CUDA device")
    torch.set_num_threads(args.threads)
    n_train, epochs = (400, 2) if args.quick else (4000, 30)
    data = load_mnist1d(n_train=n_train, n_test=1000)
    config = TrainConfig(epochs=epochs, batch_size=64)
    results = []
    for name, make in workloads(data, config, args.dim).items():
        row = {"workload": name}
        for device in devices():
            taken = seconds(make(device), device, args.repeats)
            row[f"{device.type}_seconds"] = taken
            print(f"{name} on {device.type}: {taken:.3f} s", file=sys.stderr)
        if "cuda_seconds" in row:
            row["speedup"] = row["cpu_seconds"] / row["cuda_seconds"]
        results.append(row)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    settings = {"n_train": n_train, "epochs": epochs, "dim": args.dim, "repeats": args.repeats}
    settings["gpu"] = gpu
    path = output_path("gpu", args.quick, args.out)
    write_record(path, "gpu", settings, args.threads, {"workloads": results})
    print(table(results, args.threads, gpu))
    print(f"\nwritten to {path}", file=sys.stderr)


def table(results: list[dict], threads: int, gpu: str | None) -> str:
    header = ["workload", f"CPU ({threads} threads) s", f"{gpu or 'CUDA'} s", "speed-up"]
    rows = [
        [
            row["workload"],
            f"{row['cpu_seconds']:.3f}",
            f"{row['cuda_seconds']:.3f}" if "cuda_seconds" in row else "-",
            f"{row['speedup']:.1f}x" if "speedup" in row else "-",
        ]
        for row in results
    ]
    return markdown_table(header, rows)


if __name__ == "__main__":
    main()
