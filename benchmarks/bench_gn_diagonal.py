"""The Gauss-Newton diagonal of a language model: the loss Hessian applied position by position.

:func:`tda.curvature.gauss_newton_diagonal` on the Hydra ``python_lm`` experiment's transformer
(initial weights, seed 0) over windows of standard-library source. Each chunk's sandwich
:math:`\\operatorname{diag}(J^\\top H J)` is taken twice on the same Jacobians and Hessians: by
position blocks (what the library does for a sum of token losses) and as one ``[T V, T V]`` product
(what it did before, and still does for a loss coupling positions). Reported per example: the
whole call, the two sandwich forms, the call as it would be with the full product (the call minus
the block sandwich plus the full one, all measured in the same run), and the largest relative
difference between the two diagonals.

Run from the repository root: ``python -m benchmarks.bench_gn_diagonal [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from unittest import mock

import torch

from benchmarks.record import available_cores, markdown_table, output_path, write_record
from tda.curvature import simple
from tda.data import load_python_source
from tda.models import build_model
from tda.task import LanguageModelingTask
from tda.transformer import CausalTransformer

MODEL = {"vocab_size": 128, "dim": 32, "heads": 2, "layers": 2}  # conf/experiment/python_lm.yaml
FULL = {"examples": 8, "context": 32}
QUICK = {"examples": 2, "context": 8}


class TimedSandwich:
    """Stands in for ``_sandwich_diagonal``: times both forms on each chunk, returns the blocks'."""

    def __init__(self) -> None:
        self.seconds = {"block": 0.0, "full": 0.0}
        self.difference = 0.0
        self._sandwich = simple._sandwich_diagonal

    def __call__(self, jacobians, hessians, positions):
        block = self._timed("block", jacobians, hessians, positions)
        full = self._timed("full", jacobians, hessians, 1)  # one block: the whole product
        scale = float(full.abs().max()) or 1.0
        self.difference = max(self.difference, float((block - full).abs().max()) / scale)
        return block

    def _timed(self, form, *arguments):
        start = time.perf_counter()
        result = self._sandwich(*arguments)
        self.seconds[form] += time.perf_counter() - start
        return result


def measure(examples: int, context: int) -> dict:
    data = load_python_source(n_train=examples, n_test=1, context=context).train
    model = build_model(lambda: CausalTransformer(context=context, **MODEL), seed=0)
    sandwich = TimedSandwich()
    with mock.patch.object(simple, "_sandwich_diagonal", sandwich):
        start = time.perf_counter()
        simple.gauss_newton_diagonal(model, LanguageModelingTask(), data)
        call = time.perf_counter() - start
    block, full = sandwich.seconds["block"], sandwich.seconds["full"]
    per = 1.0 / examples
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "call_s_per_example": (call - full) * per,
        "block_sandwich_s_per_example": block * per,
        "full_sandwich_s_per_example": full * per,
        "call_with_full_product_s_per_example": (call - block) * per,
        "speedup": (call - block) / (call - full),
        "max_relative_difference": sandwich.difference,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-scale smoke run")
    parser.add_argument("--out", help="JSON path (default results/gn-diagonal-lm.json)")
    args = parser.parse_args(argv)
    settings = {**(QUICK if args.quick else FULL), "model": MODEL, "model_seed": 0, "data_seed": 0}
    threads = min(2, available_cores())
    torch.set_num_threads(threads)
    row = measure(settings["examples"], settings["context"])
    header = [
        "T",
        "V",
        "parameters",
        "call (s/example)",
        "sandwich by position (s)",
        "full sandwich (s)",
        "call with the full product (s)",
        "speed-up",
        "max rel. diff.",
    ]
    cells = [settings["context"], MODEL["vocab_size"], row["parameters"],
             f"{row['call_s_per_example']:.2f}", f"{row['block_sandwich_s_per_example']:.2f}",
             f"{row['full_sandwich_s_per_example']:.2f}",
             f"{row['call_with_full_product_s_per_example']:.2f}", f"{row['speedup']:.1f}x",
             f"{row['max_relative_difference']:.1e}"]  # fmt: skip
    print(markdown_table(header, [cells]))
    path = output_path("gn-diagonal-lm", args.quick, args.out)
    write_record(path, "gn_diagonal", settings, threads, row)


if __name__ == "__main__":
    main(sys.argv[1:])
