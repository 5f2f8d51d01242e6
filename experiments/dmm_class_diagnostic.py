"""Why class-wise DMM fails: TRAK's summed effect against the true shift of removing a class.

A diagnostic, not an unlearner: it reads the oracles of the class forget sets themselves (which no
method may look at). For each class ``c`` given, the true shift is the mean over the N originals
minus the mean over the N oracles (retrained without class ``c``) of the margin of every class-c
training point; TRAK's predicted shift is the summed score of the class on that point (the DMM
predictor before calibration). Reported: both means, the least-squares scale that maps one to the
other, and their correlation over the class's points:

    python -m experiments.dmm_class_diagnostic mnist1d_cnn --classes 0 1 \\
        --output results/dmm-class-diagnostic-cnn.json

``--retain-kernel`` builds the predictor with ``retain_kernel=True`` (the class scored against
the kernel of the examples that stay) and also reports the mean predicted shift's ratio to the true
one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import unlearn
from benchmarks.record import command_line, environment
from experiments.unlearning import build_predictor
from tda.atomic import write_json
from tda.device import on_device
from unlearn.klom import margins_of

CONF = Path(__file__).resolve().parents[1] / "conf"


def class_shift(cfg, predictor, originals, train, label: int) -> dict:
    """True and TRAK-predicted margin shifts on the training points of class ``label``."""
    forget = unlearn.ClassForgetSet(label).indices(train)
    oracles = class_oracles(cfg, train, forget)
    points = train.subset(forget)
    true = margins_of(originals, points).mean(0) - margins_of(oracles, points).mean(0)
    predicted = predictor.forget_effect(forget)[torch.as_tensor(forget)].double().numpy()
    return {
        "label": label,
        "points": len(forget),
        "true_shift_mean": float(true.mean()),
        "predicted_shift_mean": float(predicted.mean()),
        "best_scale": float(true @ predicted / (predicted @ predicted)),
        "mean_ratio": float(predicted.mean() / true.mean()),
        "correlation": float(np.corrcoef(true, predicted)[0, 1]),
    }


def class_oracles(cfg, train, forget) -> list:
    """The N oracles retrained without ``forget`` (seeds ``oracle_seed``...), loaded or trained."""
    seeds = [cfg.oracle_seed + i for i in range(cfg.models)]
    return unlearn.load_or_train_oracles(
        on_device(instantiate(cfg.model), cfg.device), train, forget, instantiate(cfg.train), seeds,
        Path(cfg.workspace) / "oracles",
    ).models  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="e.g. mnist1d_mlp or mnist1d_cnn")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--retain-kernel", action="store_true", help="score against R's kernel")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"experiment={args.experiment}", "unlearner=dmm", "predictor=trak"]
    overrides += [f"predictor.retain_kernel={str(args.retain_kernel).lower()}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("unlearn", overrides=[*overrides, f"workspace=runs/{args.experiment}"])
    train, factory = instantiate(cfg.data).train, on_device(instantiate(cfg.model), cfg.device)
    originals = unlearn.load_or_train(
        factory, train, instantiate(cfg.train), list(range(cfg.models)),
        Path(cfg.workspace) / "models",
    )  # fmt: skip
    predictor = build_predictor(cfg)  # its members on cfg.device
    rows = [class_shift(cfg, predictor, originals, train, label) for label in args.classes]
    for row in rows:
        print(row)
    record = {"command": command_line(), **environment(1), "experiment": args.experiment}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, {**record, "classes": rows})


if __name__ == "__main__":
    main()
