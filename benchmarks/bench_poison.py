"""Backdoor poison detection on MNIST-1D: which training examples make the trigger work?

Per seed ``s``: MNIST-1D (4000 train, data seed 0); 1% of the training examples (40, none of
class 0) get the trigger ``(4, -4, 4, -4)`` over their last four positions and label 0
(``Backdoor.plant``, seed ``s``); the benchmark MLP 40-128-128-10 is trained on them (Adam 3e-3,
batch 64, 30 epochs, seed ``s``, 10 checkpoints). The attack queries are 100 test inputs of other
classes with the trigger written in, labelled 0 (``Backdoor.attack``); each training example's
suspicion is its mean score over them (``values_from_scores``) under

* TRAK (one model, ``DenseProjector`` k = 2048, damping 0.1),
* grad-cos: the cosine of the same projected output gradients (no loss weight),
* influence functions with EK-FAC curvature,
* TracIn-CP over the 10 checkpoints,

against query-free rankings: EK-FAC self-influence (the mislabel detector), the training loss
and a random order. Each reports the fraction of the 40 poisons in its top 1% and 2% and its AUC
(``mislabel_detection``), with the backdoor's success rate and the clean test accuracy.

Run from the repository root: ``python -m benchmarks.bench_poison [--quick]``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.bench_valuation import feature_store, timed
from benchmarks.record import (
    REPO_ROOT,
    detection_summary,
    detection_table,
    output_path,
    write_record,
)
from tda import (
    TRAK,
    EKFACSolver,
    GradientSimilarity,
    InfluenceFunction,
    TracIn,
    TrainConfig,
    load_mnist1d,
    train,
)
from tda.models import MLP, build_model
from tda.outputs import accuracy
from tda.task import ClassificationTask
from tda.valuation import Backdoor, mislabel_detection, values_from_scores

FULL = {"n_train": 4000, "n_test": 1000, "epochs": 30, "checkpoints": 10, "seeds": [0, 1, 2],
        "dim": 2048, "queries": 100}  # fmt: skip
QUICK = {"n_train": 400, "n_test": 200, "epochs": 5, "checkpoints": 5, "seeds": [0], "dim": 256,
         "queries": 20}  # fmt: skip
FRACTION = 0.01
FOUND_AT = (0.01, 0.02)
BACKDOOR = Backdoor(pattern=(4.0, -4.0, 4.0, -4.0), target=0)


def factory():
    return MLP(40, (128, 128), 10)


def suspicions(model, checkpoints, data, attack, store) -> dict:
    """Each method's suspicion ``[n]`` (higher: more likely a poison) and its seconds (TRAK's
    and grad-cos's without the featurization they share)."""
    on_store = lambda attributor: values_from_scores(attributor.fit(store).score("query"))  # noqa: E731

    def loss():
        with torch.no_grad():
            return ClassificationTask().loss(model(data.inputs), data.targets)

    influence = lambda: InfluenceFunction(EKFACSolver()).fit(model, data)  # noqa: E731
    methods = {
        "TRAK on the attack": lambda: on_store(TRAK(damping=0.1)),
        "grad-cos on the attack": lambda: on_store(GradientSimilarity(normalize=True)),
        "IF (EK-FAC) on the attack": lambda: values_from_scores(influence().score(attack)),
        "TracIn-CP on the attack": lambda: values_from_scores(
            TracIn().fit(factory, checkpoints, data).score(attack)
        ),
        "IF (EK-FAC) self-influence": lambda: influence().self_influence(),
        "training loss": loss,
        "random": lambda: torch.rand(len(data), generator=torch.Generator().manual_seed(0)),
    }
    return {name: timed(method) for name, method in methods.items()}


def run_seed(settings, splits, seed: int, workspace) -> tuple[list[dict], dict]:
    data, poisoned = BACKDOOR.plant(splits.train, FRACTION, seed)
    model = build_model(factory, seed)
    config = TrainConfig(epochs=settings["epochs"], checkpoints=settings["checkpoints"])
    directory = workspace / "models" / f"seed-{seed}"
    checkpoints = train(model, data, config, seed=seed, checkpoint_dir=directory).checkpoints
    attack = BACKDOOR.attack(splits.test).subset(range(settings["queries"]))
    root = workspace / "features"
    store, featurize_seconds = timed(
        lambda: feature_store(model, data, attack, settings["dim"], root)
    )
    model_info = {"seed": seed, "attack_success": BACKDOOR.success_rate(model, splits.test),
                  "clean_test_accuracy": accuracy(model, splits.test),
                  "featurize_seconds": featurize_seconds}  # fmt: skip
    print(f"seed {seed}: {model_info}", flush=True)
    rows = []
    for name, (suspicion, seconds) in suspicions(model, checkpoints, data, attack, store).items():
        report = mislabel_detection(suspicion, poisoned, fractions=FOUND_AT)
        rows.append({"seed": seed, "method": name, **report.as_dict(), "seconds": seconds})
        found = ", ".join(f"top {f:.0%}: {v:.0%}" for f, v in report.found_at.items())
        print(f"  {name}: poisons found {found}, AUC {report.auc:.3f} in {seconds} s", flush=True)
    return rows, model_info


def summary(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds per method."""
    return detection_summary(rows, {f"found_at_{f}": str(f) for f in FOUND_AT})


def print_table(table: list[dict]) -> None:
    print(detection_table(table, ["poisons in top 1% (%)", "in top 2% (%)"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minute-scale smoke run")
    parser.add_argument(
        "--out", help="JSON path (default results/poison.json; --quick: runs/quick/)"
    )
    args = parser.parse_args(argv)
    settings = {**(QUICK if args.quick else FULL), "poison_fraction": FRACTION,
                "pattern": list(BACKDOOR.pattern), "target": BACKDOOR.target, "data_seed": 0,
                "threads": 1, "trak_damping": 0.1}  # fmt: skip
    torch.set_num_threads(1)
    workspace = REPO_ROOT / "runs" / ("bench_poison-quick" if args.quick else "bench_poison")
    splits = load_mnist1d(settings["n_train"], settings["n_test"], seed=0)
    rows, models = [], []
    for seed in settings["seeds"]:
        seed_rows, info = run_seed(settings, splits, seed, workspace)
        rows += seed_rows
        models.append(info)
    results = {"models": models, "per_seed": rows, "summary": summary(rows)}
    write_record(output_path("poison", args.quick, args.out), "poison", settings, 1, results)
    print_table(results["summary"])


if __name__ == "__main__":
    main()
