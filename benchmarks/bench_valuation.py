"""Mislabel detection and data pruning on MNIST-1D with 10% of the training labels flipped.

Per seed ``s``: MNIST-1D (4000 train, data seed 0), 10% of the training labels flipped to another
class (``flip_labels``, seed ``s``), the benchmark MLP 40-128-128-10 trained on the noisy labels
(Adam 3e-3, batch 64, 30 epochs, seed ``s``). Training examples are ranked by

* TRAK self-influence (one model, ``DenseProjector`` k = 2048, damping 0.1): the diagonal of
  TRAK's train-by-train scores (``tda.valuation.self_scores``);
* influence-function self-influence with EK-FAC curvature (``InfluenceFunction.self_influence``);
* grad-dot self-score, the squared loss-gradient norm (``loss_gradient_norms``);
* TracIn-CP self-influence, that norm summed over 10 checkpoints saved during training and
  weighted by their learning rates (``tracin_self_influence``);
* the mean training loss over the same checkpoints (``checkpoint_loss``);
* the training loss and a random order, as baselines;

and each ranking reports the fraction of flipped labels found in its top 10% and 20% and its AUC
(``mislabel_detection``), with its wall time. Pruning (seed 0's network only): values are the mean
TRAK scores on 500 clean held-out validation queries; the lowest-value 10-50% of the training set
is removed and the MLP retrained (``pruning_curve``, seeds 0-2) and its accuracy measured on the
other 500 held-out examples, against removing the same fraction at random; a second curve
removes the highest mean checkpoint losses (seed 0's run) first. The workspace
``runs/bench_valuation[-<model>][-checkpoints<N>][-quick]/`` (git-ignored; its own for each
``--checkpoints``, whose saved models differ) keeps the pruning runs (resumable) and the
valuation report with its figure.

Run from the repository root: ``python -m benchmarks.bench_valuation [--quick] [--no-pruning]``.
"""

from __future__ import annotations

import argparse
import shutil
import time

import torch

from benchmarks.record import (
    REPO_ROOT,
    detection_summary,
    detection_table,
    markdown_table,
    output_path,
    write_record,
)
from tda import (
    TRAK,
    DenseProjector,
    EKFACSolver,
    GradientFeaturizer,
    InfluenceFunction,
    TrainConfig,
    featurize,
    load_mnist1d,
    open_feature_store,
    train,
)
from tda.models import MLP, CNN1d, build_model
from tda.task import ClassificationTask
from tda.valuation import (
    checkpoint_loss,
    flip_labels,
    loss_gradient_norms,
    mislabel_detection,
    pruning_curve,
    self_scores,
    tracin_self_influence,
    valuation_report,
)

FULL = {
    "n_train": 4000,
    "n_test": 1000,
    "epochs": 30,
    "checkpoints": 10,
    "seeds": [0, 1, 2],
    "dim": 2048,
    "fractions": [0.1, 0.2, 0.3, 0.4, 0.5],
    "pruning_seeds": [0, 1, 2],
}
QUICK = {
    "n_train": 400,
    "n_test": 200,
    "epochs": 5,
    "checkpoints": 5,
    "seeds": [0],
    "dim": 256,
    "fractions": [0.2, 0.4],
    "pruning_seeds": [0],
}
FLIP_FRACTION = 0.1


MODELS = {"mlp": lambda: MLP(40, (128, 128), 10), "cnn": lambda: CNN1d(40, 32, 10)}


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, round(time.perf_counter() - start, 2)


def feature_store(model, train_data, queries, dim: int, root):
    """One model's train and (if given) query features, dense k = ``dim`` (rebuilt every run)."""
    shutil.rmtree(root, ignore_errors=True)
    featurizer = GradientFeaturizer(DenseProjector(dim, seed=0))
    store = open_feature_store(root, featurizer)
    splits = {"train": train_data} | ({} if queries is None else {"query": queries})
    featurize(model, splits, featurizer, store, checkpoint_id="final", progress=False)
    return store


def trak_scores(model, train_data, queries, dim: int, root) -> TRAK:
    """A fitted TRAK (damping 0.1) over :func:`feature_store`."""
    return TRAK(damping=0.1).fit(feature_store(model, train_data, queries, dim, root))


def rankings(model, checkpoints, noisy, settings, workspace) -> dict:
    """Suspicion scores (higher: more likely mislabelled) and their wall times."""
    n = len(noisy)

    def trak():
        attributor = trak_scores(model, noisy, None, settings["dim"], workspace / "features")
        return self_scores(lambda rows: attributor.score("train", indices=rows), n, 512)

    def ekfac():
        influence = InfluenceFunction(EKFACSolver())  # every layer, the CNN's convolutions too
        return influence.fit(model, noisy).self_influence()

    def loss():
        with torch.no_grad():
            return ClassificationTask().loss(model(noisy.inputs), noisy.targets)

    methods = {
        "TRAK self-influence": trak,
        "IF (EK-FAC) self-influence": ekfac,
        "grad-dot self-score": lambda: loss_gradient_norms(model, noisy),
        "TracIn-CP self-influence": lambda: tracin_self_influence(
            MODELS[settings["model"]], checkpoints, noisy
        ),
        "mean training loss over checkpoints": lambda: checkpoint_loss(
            MODELS[settings["model"]], checkpoints, noisy
        ),
        "training loss": loss,
        "random": lambda: torch.rand(n, generator=torch.Generator().manual_seed(0)),
    }
    return {name: timed(method) for name, method in methods.items()}


def detection(settings, splits, workspace) -> tuple[list[dict], dict]:
    """Mislabel detection for every seed and ranking; returns rows and seed 0's model/data."""
    rows, first = [], {}
    for seed in settings["seeds"]:
        noisy, flipped = flip_labels(splits.train, FLIP_FRACTION, splits.num_classes, seed)
        model = build_model(MODELS[settings["model"]], seed)
        config = TrainConfig(epochs=settings["epochs"], checkpoints=settings["checkpoints"])
        directory = workspace / "models" / f"seed-{seed}"
        checkpoints = train(model, noisy, config, seed=seed, checkpoint_dir=directory).checkpoints
        ranked = rankings(model, checkpoints, noisy, settings, workspace)
        for name, (suspicion, seconds) in ranked.items():
            report = mislabel_detection(suspicion, flipped)
            rows.append({"seed": seed, "method": name, **report.as_dict(), "seconds": seconds})
            print(f"seed {seed} {name}: {report} in {seconds} s", flush=True)
            if seed == settings["seeds"][0]:
                first[name] = suspicion
        if "model" not in first:
            first |= {"model": model, "noisy": noisy, "flipped": flipped}
    return rows, first


def pruning(settings, splits, first, workspace) -> dict:
    """Values on clean validation queries -> pruning curve and the valuation report; and the
    pruning curve that removes the highest mean checkpoint losses first (no queries)."""
    validation = splits.test.subset(range(len(splits.test) // 2))
    held_out = splits.test.subset(range(len(splits.test) // 2, len(splits.test)))
    attributor = trak_scores(
        first["model"], first["noisy"], validation, settings["dim"], workspace / "features"
    )
    scores = attributor.score("query")

    def curve_by(values, directory):
        return pruning_curve(
            MODELS[settings["model"]],
            first["noisy"],
            held_out,
            values,
            fractions=settings["fractions"],
            seeds=settings["pruning_seeds"],
            config=TrainConfig(epochs=settings["epochs"]),
            workspace=workspace / directory,
            progress=True,
        )

    curve = curve_by(scores.double().mean(0), "pruning")
    by_loss = curve_by(-first["mean training loss over checkpoints"], "pruning-checkpoint-loss")
    report = valuation_report(
        first["noisy"],
        scores=scores,
        self_influence=first["TRAK self-influence"],
        flipped=first["flipped"],
        pruning=curve,
    )
    report.save(workspace / "report")
    return {"pruning": curve, "pruning_by_checkpoint_loss": by_loss}


def summary(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds per method."""
    return detection_summary(rows, {"found_at_10": "0.1", "found_at_20": "0.2"})


def print_tables(table: list[dict], curves: dict | None) -> None:
    print(detection_table(table, ["found in top 10% (%)", "found in top 20% (%)"]))
    if curves is not None:
        columns = [
            (curves["pruning"], "value"),
            (curves["pruning_by_checkpoint_loss"], "value"),
            (curves["pruning"], "random"),
        ]
        body = []
        for index, fraction in enumerate(curves["pruning"].fractions):
            cells = [f"{100 * fraction:g}%"]
            for curve, strategy in columns:
                low, high = curve.interval(strategy)
                mean = curve.mean(strategy)[index]
                cells.append(f"{100 * mean:.1f} [{100 * low[index]:.1f}, {100 * high[index]:.1f}]")
            body.append(cells)
        header = [
            "removed",
            "lowest TRAK value: acc % [95% CI]",
            "highest checkpoint loss",
            "random",
        ]
        print(markdown_table(header, body))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="minute-scale smoke run")
    parser.add_argument("--no-pruning", action="store_true", help="mislabel detection only")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp", help="the network")
    parser.add_argument("--checkpoints", type=int, help="TracIn-CP checkpoints (default 10)")
    parser.add_argument(
        "--out", help="JSON path (default results/valuation[-cnn].json; --quick: runs/quick/)"
    )
    args = parser.parse_args(argv)
    settings = {
        "model": args.model,
        **(QUICK if args.quick else FULL),
        "flip_fraction": FLIP_FRACTION,
        "data_seed": 0,
        "threads": 1,
        "trak_damping": 0.1,
    }
    if args.checkpoints is not None:
        settings["checkpoints"] = args.checkpoints
    torch.set_num_threads(1)
    name = "valuation" if args.model == "mlp" else f"valuation-{args.model}"
    kept = name + (f"-checkpoints{args.checkpoints}" if args.checkpoints is not None else "")
    workspace = REPO_ROOT / "runs" / (f"bench_{kept}-quick" if args.quick else f"bench_{kept}")
    splits = load_mnist1d(settings["n_train"], settings["n_test"], seed=0)
    rows, first = detection(settings, splits, workspace)
    curves = None if args.no_pruning else pruning(settings, splits, first, workspace)
    results = {"per_seed": rows, "summary": summary(rows)}
    if curves is not None:
        results |= {key: curve.as_dict() for key, curve in curves.items()}
    write_record(output_path(name, args.quick, args.out), "valuation", settings, 1, results)
    print_tables(results["summary"], curves)


if __name__ == "__main__":
    main()
