"""NTK-surrogate faithfulness: Kendall tau and agreement of kernel machines vs the network.

For each (data set, model): train the network (seed 0), compute the empirical NTK of the
training set and between held-out test examples and the training set (trace / pseudo, exact and
sparse-JL-projected), fit kernel logistic regression and a one-vs-rest kernel SVM to the
network's predictions on the training set, and compare the surrogate's decision values with the
network's logits on the test set (``tda.ntk.faithfulness``). Reported per kernel: time to compute
the kernels, peak resident memory above the process's level before (Linux ``VmHWM``, reset per
kernel), the analytic footprint of features + kernel, and per machine the fit time, Kendall tau
(pooled and per class), arg-max agreement and test accuracies.

Run from the repository root: ``python -m benchmarks.bench_ntk [--quick]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.record import markdown_table, output_path, write_record
from tda.data import load_digits, load_mnist1d
from tda.device import module_device, on_device, resolve_device
from tda.models import MLP, CNN1d, build_model
from tda.ntk import EmpiricalNTK, KernelLogisticRegression, KernelSVM, faithfulness
from tda.ntk.kernel import kernel_from_features
from tda.ntk.surrogate import decision_function
from tda.outputs import logits_of
from tda.projection import SparseProjector
from tda.training import TrainConfig, train

FULL = {"n_train": 2000, "n_test": 500, "epochs": 30, "dims": [128, 512, 2048], "digits": True}
QUICK = {"n_train": 300, "n_test": 100, "epochs": 5, "dims": [64], "digits": False}
KINDS = ("trace", "pseudo")


def setups(settings: dict) -> list[tuple[str, object, object]]:
    """(name, data splits, model factory) of each benchmarked network."""
    mnist = load_mnist1d(settings["n_train"], settings["n_test"], seed=0)
    chosen = [
        ("mnist1d-mlp", mnist, lambda: MLP(40, (128, 128), 10)),
        ("mnist1d-cnn", mnist, lambda: CNN1d(40, 32, 10)),
    ]
    if settings["digits"]:
        chosen.append(("digits-mlp", load_digits(seed=0), lambda: MLP(64, (64,), 10)))
    return chosen


def kernels(dims: list[int], limit: int) -> list[tuple[str, EmpiricalNTK]]:
    """Exact trace and pseudo NTKs, then their sparse-JL projections at each dim."""
    chosen = [(kind, EmpiricalNTK(kind, memory_limit_bytes=limit)) for kind in KINDS]
    for dim in dims:
        projector = SparseProjector(dim, nonzeros=4, seed=0)
        chosen += [
            (f"{kind}-proj{dim}", EmpiricalNTK(kind, projector, memory_limit_bytes=limit))
            for kind in KINDS
        ]
    return chosen


def _status(field: str) -> int:
    """``VmHWM`` / ``VmRSS`` of this process in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    try:  # "5" resets the peak resident set size (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure_kernel(ntk: EmpiricalNTK, model, splits) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Training Gram and test-by-train kernel, with time and memory."""
    _reset_peak()  # the peak restarts at the current resident size
    before, device = _status("VmRSS"), module_device(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    features = ntk.features(model, splits.train.inputs)
    gram = kernel_from_features(features, features).cpu()
    rows = ntk.cross_matrix(model, splits.test.inputs, features).cpu()
    seconds = time.perf_counter() - start
    footprint = (
        ntk.required_bytes(
            model, splits.train.inputs, n_left=len(splits.test), n_right=len(splits.train)
        )
        + len(splits.train) ** 2 * 8
    )
    cost = {
        "kernel_seconds": round(seconds, 2),
        "peak_memory_mib": round((_status("VmHWM") - before) / 2**20, 1),
        "footprint_mib": round(footprint / 2**20, 1),
        "feature_width": features.shape[1],
    }
    if device.type == "cuda":
        cost["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    del features
    return gram, rows, cost


def evaluate(name: str, splits, factory, settings: dict, save) -> list[dict]:
    """Train one network and measure every kernel and machine on it; ``save(rows)`` after each."""
    model = build_model(on_device(factory, settings["device"]), seed=0)
    train(model, splits.train, TrainConfig(epochs=settings["epochs"]), seed=0)
    train_logits, test_logits = logits_of(model, splits.train), logits_of(model, splits.test)
    network_accuracy = float((test_logits.argmax(1) == splits.test.targets).float().mean())
    rows = []
    limit = int(settings["memory_limit_gib"] * 2**30)
    for kernel_name, ntk in kernels(settings["dims"], limit):
        gram, test_rows, cost = measure_kernel(ntk, model, splits)
        for machine in (KernelLogisticRegression(), KernelSVM()):
            start = time.perf_counter()
            fitted = machine.fit(gram, train_logits.argmax(1), splits.num_classes)
            fit_seconds = time.perf_counter() - start
            decisions = decision_function(fitted, test_rows)
            report = faithfulness(test_logits, decisions)
            surrogate_accuracy = float((decisions.argmax(1) == splits.test.targets).double().mean())
            rows.append(
                {
                    "setup": name,
                    "kernel": kernel_name,
                    "machine": type(machine).__name__,
                    **cost,
                    "fit_seconds": round(fit_seconds, 2),
                    **report.as_dict(),
                    "network_test_accuracy": network_accuracy,
                    "surrogate_test_accuracy": surrogate_accuracy,
                }
            )
            print(_line(rows[-1]), flush=True)
            save(rows)
    return rows


def _line(row: dict) -> str:
    return (
        f"{row['setup']} {row['kernel']} {row['machine']}: tau {row['kendall_tau']:.3f} "
        f"agreement {row['agreement']:.3f} kernel {row['kernel_seconds']} s "
        f"peak {row['peak_memory_mib']} MiB"
    )


def table(rows: list[dict]) -> str:
    header = [
        "setup",
        "kernel",
        "machine",
        "Kendall tau",
        "tau per class",
        "agreement",
        "surrogate acc",
        "network acc",
        "kernel s",
        "peak MiB",
        "footprint MiB",
    ]
    body = [
        [
            r["setup"],
            r["kernel"],
            r["machine"],
            f"{r['kendall_tau']:.3f}",
            f"{r['kendall_tau_per_class']:.3f}",
            f"{r['agreement']:.3f}",
            f"{r['surrogate_test_accuracy']:.3f}",
            f"{r['network_test_accuracy']:.3f}",
            r["kernel_seconds"],
            r["peak_memory_mib"],
            r["footprint_mib"],
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run")
    parser.add_argument("--out", help="JSON path (default results/ntk.json; --quick: runs/quick/)")
    parser.add_argument("--n-train", type=int, help="training examples (MNIST-1D)")
    parser.add_argument("--dims", type=int, nargs="*", help="projection sizes (none: exact only)")
    parser.add_argument("--no-digits", action="store_true", help="skip the digits MLP")
    parser.add_argument("--setups", nargs="*", help="only these setups (e.g. mnist1d-cnn)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda: network and kernels")
    parser.add_argument("--memory-limit-gib", type=float, default=3.0, help="per kernel")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    settings = {**(QUICK if args.quick else FULL), "model_seed": 0, "data_seed": 0}
    settings.update(threads=args.threads, device=str(resolve_device(args.device)))
    settings.update(memory_limit_gib=args.memory_limit_gib)
    if args.n_train is not None:
        settings["n_train"] = args.n_train
    if args.dims is not None:
        settings["dims"] = args.dims
    if args.no_digits:
        settings["digits"] = False
    torch.set_num_threads(args.threads)
    settings["setups"] = args.setups
    path = output_path("ntk", args.quick, args.out)
    rows = []
    for name, splits, factory in setups(settings):
        if args.setups and name not in args.setups:
            continue

        def save(new, done=tuple(rows)):  # a killed run keeps every finished row
            write_record(path, "ntk", settings, args.threads, {"rows": [*done, *new]})

        rows += evaluate(name, splits, factory, settings, save)
    print(table(rows))


if __name__ == "__main__":
    main()
