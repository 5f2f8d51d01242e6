"""Milliseconds per optimiser step: the unlearning loop against the trainer, on the demo setting.

MNIST-1D 4000/1000, MLP 40-128-128-10 trained 30 epochs; forget a random 10% (400 examples);
batch 64. Times FT (no mask), SalUn (a 50% mask enforced every step) and RL (the same two phases
as SalUn without a mask) against ``tda.train`` on the retain set with Adam and with the loop's SGD,
each the median of ``--repeats`` runs on ``--threads`` intra-op threads. Writes
``results/unlearning-loop-speed.json`` (``runs/quick/`` with ``--quick``)::

    python -m experiments.unlearn_speed --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

import tda
import unlearn
from benchmarks.record import markdown_table, output_path, write_record


def _median_ms_per_step(run, steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / steps


def measure(epochs: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per step of each unlearner and of the trainer."""
    data = tda.load_mnist1d(4000, 1000, seed=0)
    model = tda.train(tda.build_model(tda.MLP, 0), data.train, tda.TrainConfig()).model
    forget = np.random.default_rng(7).choice(len(data.train), size=400, replace=False)
    split = unlearn.ForgetSplit.of(data.train, unlearn.UnlearningRequest(forget, len(data.train)))
    loop = unlearn.LoopConfig(epochs=epochs)
    retain_steps = epochs * -(-len(split.retain) // loop.batch_size)
    both_steps = retain_steps + epochs * -(-len(split.forget) // loop.batch_size)
    methods = {
        "FT": (unlearn.FineTune(loop), retain_steps),
        "RL": (unlearn.RandomLabels(loop), both_steps),
        "SalUn": (unlearn.SalUn(loop), both_steps),
    }
    timings = {
        name: _median_ms_per_step(
            lambda method=method: method.unlearn(copy.deepcopy(model), split, seed=0),
            steps,
            repeats,
        )
        for name, (method, steps) in methods.items()
    }
    for name, optimizer in (("train (Adam)", None), ("train (SGD)", loop.optimizer)):
        config = tda.TrainConfig(epochs=epochs, **({"optimizer": optimizer} if optimizer else {}))
        timings[name] = _median_ms_per_step(
            lambda config=config: tda.train(copy.deepcopy(model), split.retain, config),
            retain_steps,
            repeats,
        )
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 epoch, 2 repeats")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs, repeats = (1, 2) if args.quick else (5, args.repeats)
    timings = measure(epochs, repeats)
    print(markdown_table(["run", "ms / step"], [[k, f"{v:.3f}"] for k, v in timings.items()]))
    settings = {"epochs": epochs, "repeats": repeats, "batch_size": 64, "forget": 400}
    path = output_path("unlearning-loop-speed", args.quick, args.output)
    write_record(path, "unlearning loop ms per step", settings, args.threads, timings)


if __name__ == "__main__":
    main()
