"""The unlearning half of `make demo`: forget 10% of MNIST-1D's training set and report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import tda
import unlearn
from tda.fingerprint import model_fingerprint

METRICS = ("UA", "RA", "TA", "MIA")
ORACLE = "Retrain (oracle)"


def forget_request(model, data: tda.DataSplits, fraction: float = 0.1) -> unlearn.UnlearningRequest:
    """A request to forget a random ``fraction`` of the training set, bound to ``model``."""
    rng = np.random.default_rng(7)
    forget = rng.choice(len(data.train), size=int(fraction * len(data.train)), replace=False)
    return unlearn.UnlearningRequest(
        forget_indices=forget.tolist(),
        train_size=len(data.train),
        seed=0,
        model_fingerprint=model_fingerprint(model),
    )


def methods(factory, config: tda.TrainConfig) -> dict[str, unlearn.UnlearningMethod]:
    """The demo's unlearners at their default settings, and the exact retraining it compares to."""
    return {
        "SalUn": unlearn.SalUn(loop=unlearn.LoopConfig(epochs=5)),
        "FT": unlearn.FineTune(loop=unlearn.LoopConfig(epochs=5)),
        ORACLE: unlearn.ExactRetraining(factory, config),
    }


def run(model, factory, data: tda.DataSplits, config: tda.TrainConfig, workspace: Path) -> None:
    """Unlearn with SalUn and FT, retrain the oracle, print the report and the audit record."""
    request = forget_request(model, data)
    audit_log = workspace / "audit.jsonl"
    results = {
        name: unlearn.Unlearner(method, audit_log=audit_log).unlearn(
            model, data.train, request, test_data=data.test
        )
        for name, method in methods(factory, config).items()
    }
    oracle = results[ORACLE]
    print(
        f"\nunlearning request {request.request_id}: forget {len(request.forget_indices)} of "
        f"{len(data.train)} training examples (random 10%)"
    )
    print(f"{'method':<18}" + "".join(f"{m:>8}" for m in METRICS) + f"{'gap':>8}{'seconds':>9}")
    for name, result in results.items():
        gap = unlearn.average_gap(result.metrics, oracle.metrics)
        values = "".join(f"{result.metrics[m]:8.1f}" for m in METRICS)
        print(f"{name:<18}{values}{gap:8.2f}{result.timings['unlearn']:9.1f}")
    record = results["SalUn"].audit
    print(
        f"\naudit record (SalUn) appended to {audit_log}: model "
        f"{record.model_fingerprint_before[:12]} -> {record.model_fingerprint_after[:12]}, "
        f"data {record.data_fingerprint[:12]}, seed {record.request.seed}"
    )
