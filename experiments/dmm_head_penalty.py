"""The head-refit predictor's penalty, chosen on proxy classes: predicted against true shifts.

For each proxy class ``c`` and penalty, the true margin shift of the class's training points is
the mean over the N originals minus the mean over the N oracles retrained without ``c``; the
predicted shift is the mean over the originals of their margin minus the head-refit predictor's
(:class:`unlearn.HeadRefitPredictor`, final layer refitted on the other classes; with
``--difference`` :class:`unlearn.HeadDifferencePredictor`). Reported per
class and penalty: both means, their ratio, their correlation over the class's points, and the
95th percentile over those points of the KLOM between the predicted margins of the N originals and
the N oracles' margins (the forget-set KLOM DMM would reach by matching the predictions exactly),
and the two terms of the margin (the class's own logit and the log-sum-exp of the others, mean
over models and points) for the originals, the oracles and the prediction.
The chosen penalty is, by ``--criterion``, the one whose ratio pooled over the proxies is closest
to 1 in log (``ratio``, the default) or whose KLOM averaged over the proxies is smallest
(``klom``): the target class (class 0, the class-wise forget set) is never read.

    python -m experiments.dmm_head_penalty mnist1d_mlp --output results/dmm-head-penalty-mlp.json
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import unlearn
from benchmarks.record import command_line, environment
from experiments.dmm_class_diagnostic import class_oracles
from tda.atomic import write_json
from tda.device import on_device
from tda.outputs import logits_of
from tda.task import ClassificationTask
from unlearn.klom import klom_per_point, margins_of

CONF = Path(__file__).resolve().parents[1] / "conf"
PENALTIES = (1e-5, 1e-6, 1e-7, 1e-8, 1e-9)


def predicted_logits(originals, train, forget, predictor) -> torch.Tensor:
    """The predictor's logits ``[N, |F|, C]`` of the class's points, one row per original."""
    request = unlearn.UnlearningRequest(forget, train_size=len(train))
    split = unlearn.ForgetSplit.of(train, request)
    return (
        torch.stack(
            [predictor.targets(model, split.forget, forget, split, seed=0) for model in originals]
        )
        .double()
        .cpu()
    )


def logit_parts(logits: torch.Tensor, label: int) -> dict:
    """The class's own logit and the log-sum-exp of the others, averaged over models and
    points: the two terms of the margin."""
    others = torch.cat([logits[..., :label], logits[..., label + 1 :]], -1)
    own = float(logits[..., label].mean())
    return {"own_logit": own, "others_logsumexp": float(torch.logsumexp(others, -1).mean())}


def model_logits(models, points) -> torch.Tensor:
    """``[N, n, C]`` logits of ``models`` on ``points`` (eval mode, on any device)."""
    with torch.no_grad():
        return torch.stack([logits_of(model, points) for model in models]).double().cpu()


def class_rows(cfg, originals, train, label: int, predictors: dict) -> list[dict]:
    """True against predicted shifts of class ``label``, one row per penalty (``predictors``:
    one predictor per penalty)."""
    forget = unlearn.ClassForgetSet(label).indices(train)
    oracles, points = class_oracles(cfg, train, forget), train.subset(forget)
    retrained = np.asarray(margins_of(oracles, points))
    original = np.asarray(margins_of(originals, points)).mean(0)
    true = original - retrained.mean(0)
    parts = {
        "original": logit_parts(model_logits(originals, points), label),
        "retrained": logit_parts(model_logits(oracles, points), label),
    }
    rows = []
    for penalty, predictor in predictors.items():
        logits = predicted_logits(originals, train, forget, predictor)
        margins = ClassificationTask().output(logits, points.targets).numpy()
        predicted = (original - margins).mean(0)
        rows.append(
            {
                "label": label,
                "penalty": penalty,
                "true_shift_mean": float(true.mean()),
                "predicted_shift_mean": float(predicted.mean()),
                "ratio": float(predicted.mean() / true.mean()),
                "correlation": float(np.corrcoef(true, predicted)[0, 1]),
                "klom_p95": float(np.percentile(klom_per_point(margins, retrained), 95)),
                "logits": {**parts, "predicted": logit_parts(logits, label)},
            }
        )
    return rows


def chosen_penalty(rows: list[dict], criterion: str = "ratio") -> float:
    """The penalty whose mean ratio over the classes is closest to 1 in log (``ratio``), or
    whose mean KLOM over the classes is smallest (``klom``)."""
    key = "ratio" if criterion == "ratio" else "klom_p95"
    by_penalty: dict[float, list[float]] = {}
    for row in rows:
        by_penalty.setdefault(row["penalty"], []).append(row[key])
    if criterion == "klom":
        return min(by_penalty, key=lambda p: np.mean(by_penalty[p]))
    return min(by_penalty, key=lambda p: abs(math.log(max(np.mean(by_penalty[p]), 1e-12))))


def predictor_of(args, train, penalty: float):
    """The head predictor the arguments name, at ``penalty``."""
    settings = {} if args.iterations is None else {"max_iterations": args.iterations}
    if args.difference:
        return unlearn.HeadDifferencePredictor(train, penalty=penalty, **settings)
    return unlearn.HeadRefitPredictor(train, penalty=penalty, rows=args.rows, **settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="e.g. mnist1d_mlp or mnist1d_cnn")
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 2, 3], help="proxies")
    parser.add_argument("--penalties", type=float, nargs="+", default=list(PENALTIES))
    parser.add_argument("--iterations", type=int, help="the predictor's max_iterations")
    parser.add_argument("--rows", choices=["all", "absent"], default="all", help="what to refit")
    parser.add_argument(
        "--difference", action="store_true", help="HeadDifferencePredictor (no --rows)"
    )
    parser.add_argument("--criterion", choices=["ratio", "klom"], default="ratio")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [f"experiment={args.experiment}", f"workspace=runs/{args.experiment}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("unlearn", overrides=overrides)
    train, factory = instantiate(cfg.data).train, on_device(instantiate(cfg.model), cfg.device)
    originals = unlearn.load_or_train(
        factory, train, instantiate(cfg.train), list(range(cfg.models)),
        Path(cfg.workspace) / "models",
    )  # fmt: skip
    predictors = {penalty: predictor_of(args, train, penalty) for penalty in args.penalties}
    settings = next(iter(predictors.values())).audit_description()
    del settings["penalty"]
    rows = [
        row
        for label in args.classes
        for row in class_rows(cfg, originals, train, label, predictors)
    ]
    for row in rows:
        print(row)
    record = {"command": command_line(), **environment(1), "experiment": args.experiment}
    record |= {"predictor": type(predictors[args.penalties[0]]).__name__, **settings}
    record["criterion"] = args.criterion
    chosen = chosen_penalty(rows, args.criterion)
    write_json(args.output, {**record, "rows": rows, "chosen_penalty": chosen})
    print("chosen penalty:", chosen)


if __name__ == "__main__":
    main()
