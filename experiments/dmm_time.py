"""DMM's unlearning time against retraining, both measured in one quiet process.

The benchmark's ``time/RT`` divides each run's time by oracle training times recorded whenever
the oracles were trained, so on a shared machine it moves with the load. Here, for each forget
set, DMM (TRAK over the 20 originals, with the scales and learning rate its benchmark run chose
on the proxy, read from ``results/unlearn-dmm-trak-m20-<forget>.json``) and exact retraining on
R alternate on the same originals, one thread each; the ratio of the medians is reported:

    python -m experiments.dmm_time runs/mnist1d_mlp --forget random_1pct random_10pct class \\
        --output results/dmm-time.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import unlearn
from benchmarks.record import markdown_table, write_record
from tda.device import on_device
from unlearn.predictors import Calibration

CONF = Path(__file__).resolve().parents[1] / "conf"


def _config(workspace: Path, forget: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "unlearn", overrides=["unlearner=dmm", f"forget={forget}", f"workspace={workspace}"]
        )


def _dmm(cfg, predictor, record: dict) -> unlearn.DatamodelMatching:
    Calibration(**record["calibration"]).apply(predictor)
    method = instantiate(cfg.unlearner, _partial_=True)(predictor=predictor)
    optimizer = partial(method.loop.optimizer.func, lr=record["used"])
    loop = unlearn.LoopConfig(
        method.loop.epochs, method.loop.batch_size, optimizer, method.loop.scheduler
    )
    return unlearn.DatamodelMatching(predictor, loop, method.forget_copies, method.retain_multiple)


def measure(workspace: Path, forget_name: str, repeats: int) -> dict:
    """Median seconds of DMM and of retraining on R over ``repeats`` originals."""
    cfg = _config(workspace, forget_name)
    record = json.loads(
        (workspace / "results" / f"unlearn-dmm-trak-m20-{forget_name}.json").read_text()
    )
    train, factory, config = (
        instantiate(cfg.data).train,
        on_device(instantiate(cfg.model), cfg.device),
        instantiate(cfg.train),
    )
    forget = instantiate(cfg.forget).indices(train)
    originals = unlearn.load_or_train(
        factory, train, config, list(range(repeats)), workspace / "models"
    )
    predictor = instantiate(cfg.predictor)
    predictor.prepare(forget)
    dmm = _dmm(cfg, predictor, record)
    retrain = unlearn.ExactRetraining(factory, config)
    dmm_seconds, retrain_seconds = [], []
    for seed, original in enumerate(originals):
        request = unlearn.forget_request(forget, train, seed=seed)
        for method, seconds in ((dmm, dmm_seconds), (retrain, retrain_seconds)):
            result = unlearn.Unlearner(method, compute_metrics=False).unlearn(
                original, train, request
            )
            seconds.append(result.timings["unlearn"])
    dmm_median, retrain_median = statistics.median(dmm_seconds), statistics.median(retrain_seconds)
    return {
        "dmm_seconds": dmm_seconds,
        "retrain_seconds": retrain_seconds,
        "fraction": dmm_median / retrain_median,
        "lr": record["used"],
        "calibration": record["calibration"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--forget", nargs="+", default=["random_10pct"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {forget: measure(args.workspace, forget, args.repeats) for forget in args.forget}
    rows = [
        [
            forget,
            f"{statistics.median(r['dmm_seconds']):.2f}",
            f"{statistics.median(r['retrain_seconds']):.2f}",
            f"{r['fraction']:.3f}",
        ]
        for forget, r in results.items()
    ]
    table = markdown_table(["forget set", "DMM s", "retraining s", "DMM / retraining"], rows)
    print(table)
    settings = {"workspace": str(args.workspace), "repeats": args.repeats, "threads": 1}
    write_record(args.output, "DMM time vs retraining", settings, 1, {**results, "table": table})


if __name__ == "__main__":
    main()
