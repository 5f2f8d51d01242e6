"""KroneckerFeaturizer's two structures beside dense and sparse projection, MNIST-1D MLP or CNN.

Measures (1) featurization throughput: examples/s on ``n`` random float32 inputs (warm caches,
median of ``repeats``), and (2) accuracy: the feature inner products
:math:`\\langle\\phi_i, \\phi_j\\rangle` of 100 MNIST-1D test examples against the exact
per-sample-gradient inner products (float64, the model trained for a few epochs), as the Pearson
correlation over pairs ``i < j`` and the relative RMS error
``sqrt(mean((estimate - exact)^2) / mean(exact^2))`` over the same pairs, averaged over seeds.

Run from the repository root: ``python -m benchmarks.bench_kronecker [--quick] [--model cnn]``
(the CNN's convolutions are sketched as Linear layers over their input patches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.record import markdown_table, output_path, write_record
from tda import DenseProjector, GradientFeaturizer, SparseProjector, build_model, load_mnist1d
from tda.features import KroneckerFeaturizer
from tda.grads import per_sample_gradients
from tda.models import MLP, CNN1d
from tda.task import ClassificationTask
from tda.training import TrainConfig, train

FULL = {"n": 4000, "speed_dims": [512, 2048], "accuracy_dims": [512, 2048, 8192], "seeds": 5}
QUICK = {"n": 500, "speed_dims": [256], "accuracy_dims": [256], "seeds": 2}
MODELS = {"mlp": MLP, "cnn": lambda: CNN1d(40, 32, 10)}


def candidates(dim: int) -> dict[str, Callable[[], object]]:
    """Fresh featurizers of feature size ``dim``, by name."""
    return {
        "Kronecker": lambda: KroneckerFeaturizer(dim, structure="kronecker"),
        "Khatri-Rao": lambda: KroneckerFeaturizer(dim, structure="khatri_rao"),
        "Dense": lambda: GradientFeaturizer(DenseProjector(dim)),
        "Sparse (s=4)": lambda: GradientFeaturizer(SparseProjector(dim)),
    }


def throughput(factory, dim: int, n: int, repeats: int) -> dict[str, float]:
    """Examples/s of each candidate on ``n`` random inputs, float32, warm."""
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(n, 40, generator=generator), torch.randint(0, 10, (n,))
    model = build_model(factory, seed=0).eval()
    rates = {}
    for name, make in candidates(dim).items():
        featurizer = make()
        featurizer(model, inputs[:256], targets[:256])  # builds cached matrices
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            featurizer(model, inputs, targets)
            times.append(time.perf_counter() - start)
        rates[name] = n / statistics.median(times)
        print(f"  {name:14s} dim={dim:5d} {rates[name]:9.0f} ex/s", file=sys.stderr)
    return rates


def pair_errors(estimate: Tensor, exact: Tensor) -> tuple[float, float]:
    """(Pearson correlation, relative RMS error) over the pairs ``i < j``."""
    upper = torch.triu_indices(len(exact), len(exact), offset=1)
    x, y = estimate[upper[0], upper[1]], exact[upper[0], upper[1]]
    correlation = torch.corrcoef(torch.stack([x, y]))[0, 1]
    return float(correlation), float(((x - y).pow(2).mean() / y.pow(2).mean()).sqrt())


def accuracy(factory, dims: list[int], seeds: int) -> list[dict]:
    """Correlation and relative RMS error of each candidate's inner products, mean over seeds."""
    splits = load_mnist1d(n_train=1000, n_test=100, seed=0)
    model = build_model(factory, seed=0, dtype=torch.float64)
    train(model, splits.train.to(dtype=torch.float64), TrainConfig(epochs=5), seed=0)
    x, y = splits.test.inputs.double(), splits.test.targets
    gradients = per_sample_gradients(model, ClassificationTask(), x, y)
    exact = gradients @ gradients.T
    rows = []
    for dim in dims:
        for name, make in candidates(dim).items():
            featurizer = make()
            scores = []
            for seed in range(seeds):
                features = featurizer.with_seed(seed)(model, x, y).features
                scores.append(pair_errors(features @ features.T, exact))
            correlation, error = (statistics.mean(column) for column in zip(*scores, strict=True))
            rows.append({"method": name, "dim": dim, "correlation": correlation, "rel_rms": error})
            print(f"  {name:14s} dim={dim:5d} r={correlation:.3f} rms={error:.3f}", file=sys.stderr)
    return rows


def table(rates: dict[int, dict[str, float]], rows: list[dict]) -> str:
    """One row per (method, dim): examples/s where measured, correlation and relative RMS."""
    lines = [
        [
            row["method"],
            row["dim"],
            f"{rates[row['dim']][row['method']]:,.0f}" if row["dim"] in rates else "",
            f"{row['correlation']:.3f}",
            f"{row['rel_rms']:.3f}",
        ]
        for row in sorted(rows, key=lambda row: row["dim"])
    ]
    return markdown_table(["featurizer", "dim", "ex/s (float32)", "corr", "rel. RMS"], lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run")
    parser.add_argument(
        "--out", help="JSON path (default results/kronecker.json; --quick: runs/quick/)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the median is kept)")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp", help="the network")
    args = parser.parse_args(argv)
    settings = {**(QUICK if args.quick else FULL), "repeats": args.repeats, "threads": 1}
    settings["model"] = args.model
    torch.set_num_threads(1)
    factory = MODELS[args.model]
    rates = {
        dim: throughput(factory, dim, settings["n"], args.repeats) for dim in settings["speed_dims"]
    }
    rows = accuracy(factory, settings["accuracy_dims"], settings["seeds"])
    results = {"examples_per_s": {str(k): v for k, v in rates.items()}, "accuracy": rows}
    name = "kronecker" if args.model == "mlp" else f"kronecker-{args.model}"
    write_record(output_path(name, args.quick, args.out), "kronecker", settings, 1, results)
    print(table(rates, rows))


if __name__ == "__main__":
    main()
