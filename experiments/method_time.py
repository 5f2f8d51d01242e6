"""Benchmark runs' chosen unlearners against exact retraining, both timed in one quiet process.

The benchmark's ``time/RT`` divides each run's time by oracle training times recorded whenever
the oracles were trained, so on a shared machine it moves with the load. Here each named run
(``${workspace}/results/<run>.json`` from ``experiments/unlearning.py``) is rebuilt from its
record: its settings, the value its proxy chose and, for DMM, its calibrated predictor (prepared
for the forget set and each original before the clock starts: the benchmark reports attribution
cost apart). Its unlearner and exact retraining on R then alternate on the first ``--repeats``
originals, one thread; the ratio of the median times is reported:

    python -m experiments.method_time runs/mnist1d_mlp --runs unlearn-dmm-trak-m20-random_1pct \\
        unlearn-dmm-trak-m20-random_10pct unlearn-dmm-trak-m20-class --output results/dmm-time.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import unlearn
from benchmarks.record import markdown_table, write_record
from experiments.run_records import read_run
from experiments.unlearning import build_predictor, build_unlearner, search_grid, settings_of
from tda.device import on_device
from tda.timing import warm_up_torch
from unlearn.predictors import Calibration


def rebuild(record: dict) -> tuple[DictConfig, unlearn.UnlearningMethod]:
    """The run's settings and the unlearner it chose (DMM: calibrated predictor, not prepared)."""
    cfg = OmegaConf.create(record["settings"])
    shared = {}
    if "predictor" in cfg.unlearner:
        predictor = build_predictor(cfg)  # its models on cfg.device
        if record["calibration"] is not None:
            Calibration(**record["calibration"]).apply(predictor)
        shared["predictor"] = predictor
    if record["tuning"] is None:
        return cfg, build_unlearner(cfg.unlearner, shared)
    keys, _ = search_grid(cfg.tuning)
    return cfg, build_unlearner(cfg.unlearner, shared, settings_of(keys, record["used"]))


def measure(workspace: Path, run: str, repeats: int) -> dict:
    """Seconds of the run's unlearner and of retraining on R, alternating over ``repeats``
    originals, and the ratio of their medians."""
    record = read_run(workspace, run, finished=True)
    cfg, method = rebuild(record)
    train = instantiate(cfg.data).train
    factory = on_device(instantiate(cfg.model), cfg.device)
    config = instantiate(cfg.train)
    forget = instantiate(cfg.forget).indices(train)
    originals = unlearn.load_or_train(
        factory, train, config, list(range(repeats)), workspace / "models"
    )
    if getattr(method, "predictor", None) is not None:
        method.predictor.prepare(forget)
        for original in originals if hasattr(method.predictor, "prepare_model") else ():
            method.predictor.prepare_model(original)  # per-model work, reported apart too
    retrain = unlearn.ExactRetraining(factory, config)
    seconds: dict[str, list[float]] = {"method": [], "retrain": []}
    for seed, original in enumerate(originals):
        request = unlearn.forget_request(forget, train, seed=seed)
        for name, unlearner in (("method", method), ("retrain", retrain)):
            result = unlearn.Unlearner(unlearner, compute_metrics=False).unlearn(
                original, train, request
            )
            seconds[name].append(result.timings["unlearn"])
    ratio = statistics.median(seconds["method"]) / statistics.median(seconds["retrain"])
    return {
        "method_seconds": seconds["method"],
        "retrain_seconds": seconds["retrain"],
        "fraction": ratio,
        "used": record["used"],
        "benchmark_time_fraction": record["time_fraction"]["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--runs", nargs="+", required=True, help="results names of the runs")
    parser.add_argument("--repeats", type=int, default=3, help="originals timed per run")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    torch.set_num_threads(1)
    warm_up_torch()  # else the first run's first unlearning carries the process's start-up
    results = {run: measure(args.workspace, run, args.repeats) for run in args.runs}
    rows = [
        [
            run,
            f"{statistics.median(r['method_seconds']):.2f}",
            f"{statistics.median(r['retrain_seconds']):.2f}",
            f"{r['fraction']:.3f}",
            f"{r['benchmark_time_fraction']:.3f}",
        ]
        for run, r in results.items()
    ]
    header = ["run", "unlearner s", "retraining s", "unlearner / retraining", "benchmark time/RT"]
    table = markdown_table(header, rows)
    print(table)
    settings = {"workspace": str(args.workspace), "repeats": args.repeats, "threads": 1}
    write_record(
        args.output, "unlearning time vs retraining", settings, 1, {**results, "table": table}
    )


if __name__ == "__main__":
    main()
