"""DMM results: predictor quality (LDS on training queries) against unlearning quality (KLOM).

Reads the ``experiments/unlearning.py`` results of DMM with each predictor (TRAK with M models,
datamodels, the oracle = Oracle Matching) and of the engine's baselines on the same originals,
measures each predictor's LDS on training points against the held-out subsets of the datamodel
ground truth (``datamodels-train-logits/``, subsets after ``fit_subsets``), and writes one JSON
record, Markdown tables and a figure (LDS vs forget-set KLOM):

    python -m experiments.dmm_table runs/mnist1d_mlp --forget random_1pct random_10pct class \\
        --output results/dmm.json --figure results/dmm-lds-vs-klom.png \\
        --timing results/dmm-time.json

``--scores NAME ...`` adds DMM with any attributor's training-point scores (``predictor=scores
scores_name=NAME``; their LDS from ``scores/NAME.npy``); ``--trak-models`` lists the TRAK
predictors' M (default 1 5 10 20); ``--override experiment=mnist1d_cnn`` (any Hydra override)
composes the workspace's own experiment. DMM records in the workspace that no row covers are named
on stderr, never dropped silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from benchmarks.record import command_line, environment, markdown_table
from experiments.run_records import find_run, first_finished
from experiments.unlearn_table import HEADER, klom_cell, reference_rows, row
from experiments.unlearning import build_predictor
from tda.atomic import write_json
from tda.datamodels import GroundTruthStore
from tda.eval import lds
from unlearn.predictors import load_scores_predictor, subset_logits

TRAK_MODELS = (1, 5, 10, 20)
BASELINES = ("ft", "ga", "rl", "graddiff", "salun", "l1_sparse", "prune_then_unlearn")
GOAL_BASELINES = ("ft", "ga", "graddiff", "salun", "l1_sparse")  # the list


def below(value: float, other: float) -> bool:
    """``value < other`` beyond rounding: equal KLOMs (saturated at the cap, or the same
    margins reduced in another order) are not a win."""
    return value < other and not np.isclose(value, other, rtol=1e-9, atol=1e-12)


DMM = "dmm-trak-m20"  # the headline DMM: TRAK over all 20 originals
HEAD = "dmm-head"  # DMM with the final layer refitted on R (unlearn.HeadRefitPredictor)
CONF = Path(__file__).resolve().parents[1] / "conf"
LDS_ABSENT = {"dmm-oracle": "(oracle)"}


def predictor_names(
    scores: Sequence[str] = (), trak_models: Sequence[int] = TRAK_MODELS
) -> list[str]:
    """Result names of the DMM predictors, in order of (expected) quality, with any score files'
    (``predictor=scores scores_name=<name>``: ``dmm-<name>``) before the oracle; then TRAK over
    20 models scored with the retained examples' kernel (``predictor.retain_kernel=true``), whose
    group predictions have no LDS here (one Woodbury downdate per held-out subset), and the
    head-refit predictor (``predictor=head``), which gives no scores to correlate."""
    trak = [f"dmm-trak-m{m}" for m in trak_models]
    files = [f"dmm-{name}" for name in scores]
    return [*trak, "dmm-datamodels", *files, "dmm-oracle", "dmm-trak-m20-retain", HEAD]


def dmm_config(overrides: list[str]):
    """``conf/unlearn.yaml`` with ``unlearner=dmm`` and ``overrides`` (e.g. a predictor)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("unlearn", overrides=["unlearner=dmm", *overrides])


def predictor_lds(
    workspace: str,
    score_files: Sequence[str] = (),
    trak_models: Sequence[int] = TRAK_MODELS,
    overrides: Sequence[str] = (),
) -> dict[str, dict]:
    """LDS (margins of training points) of each attribution predictor on held-out subsets, the
    score files' (``scores/<name>.npy``, training points as queries) included; ``overrides``
    compose the workspace's configuration (e.g. its ``experiment=``)."""
    base = dmm_config(["predictor=datamodels", f"workspace={workspace}", *overrides])
    train = instantiate(base.data).train
    store = GroundTruthStore.open(base.predictor.root)
    held_out = slice(base.predictor.fit_subsets, None)
    masks, truth = store.masks[held_out], subset_logits(store, train, "margin")[held_out]
    scores = {}
    for models in trak_models:
        given = ["predictor=trak", f"dmm.models={models}", f"workspace={workspace}", *overrides]
        cfg = dmm_config(given)
        scores[f"dmm-trak-m{models}"] = build_predictor(cfg).trak.score("train")
    datamodels = build_predictor(base, output="margin")  # retrains on base.device
    scores["dmm-datamodels"] = datamodels.margin_scores()
    for name in score_files:
        path = Path(workspace) / "scores" / f"{name}.npy"  # record checked: train queries, set
        scores[f"dmm-{name}"] = load_scores_predictor(path, train).scores
    results = {}
    for name, matrix in scores.items():
        result = lds(matrix.double().numpy(), masks, truth)
        results[name] = {"lds": result.mean, "ci": [result.ci_low, result.ci_high]}
        print(f"{name}: LDS {result}")
    results["subsets"] = {"held_out": int(len(masks)), "alpha": float(masks.mean())}
    return results


def _predictor_seconds(record: dict) -> str:
    seconds = record.get("predictor_seconds")
    return f"{seconds:.1f}" if seconds is not None else "-"


def comparison_table(
    workspace: Path,
    forget: str,
    scores: Sequence[str] = (),
    trak_models: Sequence[int] = TRAK_MODELS,
    extra: Sequence[str] = (),
) -> tuple[str, dict]:
    """DMM (each predictor, then the ``extra`` DMM runs) and the baselines on one forget set,
    with reference rows."""
    names = [*predictor_names(scores, trak_models), *extra, *BASELINES]
    found = {n: record for n in names if (record := find_run(workspace, f"unlearn-{n}-{forget}"))}
    if not found:
        raise FileNotFoundError(f"no results for forget set {forget!r} in {workspace}")
    left_out = uncovered_dmm_runs(workspace, forget, names)
    if left_out:
        print(
            f"{forget}: DMM records not in the table: {', '.join(left_out)} (name them with "
            "--trak-models, --scores or --extra)",
            file=sys.stderr,
        )
    rows = [[*row(n, r), _predictor_seconds(r)] for n, r in found.items()]
    complete = first_finished(found, forget)
    references = [[*cells, "-"] for cells in reference_rows(complete)]
    return markdown_table([*HEADER, "predictor s"], rows + references), found


def uncovered_dmm_runs(workspace: Path, forget: str, names: Sequence[str]) -> list[str]:
    """DMM run names with a record on ``forget`` in ``workspace`` that ``names`` do not cover."""
    suffix = f"-{forget}.json"
    present = [path.name for path in (workspace / "results").glob(f"unlearn-dmm-*{suffix}")]
    runs = sorted(name.removeprefix("unlearn-").removesuffix(suffix) for name in present)
    return [run for run in runs if run not in names]


def goal_check(found: dict, time_fraction: float | None = None, dmm_name: str = DMM) -> dict:
    """The issue's goal on one forget set for the DMM result ``dmm_name`` (the headline by
    default): DMM's forget KLOM below every listed baseline's,
    within 2x of Oracle Matching's, at no more than 10% of retraining time (``time_fraction``
    from ``experiments/method_time.py`` when given, else the benchmark run's own ratio)."""
    dmm, oracle = found.get(dmm_name), found.get("dmm-oracle")
    if dmm is None or oracle is None or dmm["status"] != "ok" or oracle["status"] != "ok":
        return {"complete": False}
    klom = dmm["klom"]["forget"]
    baselines = {
        name: found[name]["klom"]["forget"]
        for name in GOAL_BASELINES
        if name in found and found[name]["status"] == "ok"
    }
    fraction = dmm["time_fraction"]["mean"] if time_fraction is None else time_fraction
    return {
        "complete": True,
        "dmm_klom_forget": klom,
        "beats": {name: below(klom, value) for name, value in baselines.items()},
        "within_2x_of_oracle_matching": klom <= 2 * oracle["klom"]["forget"],
        "time_fraction": fraction,
        "within_10pct_time": fraction <= 0.10,
    }


def meta_table(
    quality: dict, runs: dict, scores: Sequence[str] = (), trak_models: Sequence[int] = TRAK_MODELS
) -> str:
    """Predictor | LDS | forget-set KLOM and average gap per forget set."""
    header = ["predictor", "LDS (train queries)"]
    for forget in runs:
        header += [f"KLOM F {forget}", f"gap {forget}"]
    rows = []
    for name in predictor_names(scores, trak_models):
        cells = [name.removeprefix("dmm-")]
        entry = quality.get(name)
        cells.append(f"{entry['lds']:.3f}" if entry else LDS_ABSENT.get(name, "-"))
        for found in runs.values():
            record = found.get(name)
            ok = record is not None and record["status"] == "ok"
            cells += (
                [klom_cell(record["klom"], "forget"), f"{record['average_gap']:.2f}"]
                if ok
                else [
                    "-",
                    "-",
                ]
            )
        rows.append(cells)
    return markdown_table(header, rows)


def figure(
    quality: dict,
    runs: dict,
    path: Path,
    scores: Sequence[str] = (),
    trak_models: Sequence[int] = TRAK_MODELS,
) -> None:
    """Forget-set KLOM of DMM against its predictor's LDS, one line per forget set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = plt.subplots(figsize=(5, 3.5))[1]
    for forget, found in runs.items():
        points = [
            (quality[n]["lds"], found[n]["klom"]["forget"], n.removeprefix("dmm-"))
            for n in predictor_names(scores, trak_models)
            if n in quality and n in found and found[n]["status"] == "ok"
        ]
        if points:
            x, y, labels = zip(*sorted(points), strict=True)
            axis.plot(x, y, marker="o", label=forget)
            for xi, yi, label in points:
                axis.annotate(label, (xi, yi), fontsize=7)
    axis.set_xlabel("predictor LDS on training queries")
    axis.set_ylabel("DMM forget-set KLOM P95 (lower is better)")
    axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.tight_layout()
    plt.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--forget", nargs="+", default=["random_10pct"])
    parser.add_argument(
        "--output", type=Path, help="where the JSON record goes (default: print the tables only)"
    )
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--timing", type=Path, help="results of experiments/method_time.py")
    parser.add_argument(
        "--no-lds", action="store_true", help="no predictor LDS (no datamodel ground truth)"
    )
    parser.add_argument("--scores", nargs="*", default=[], help="DMM runs with predictor=scores")
    parser.add_argument(
        "--trak-models", nargs="+", type=int, default=list(TRAK_MODELS), help="TRAK rows' M"
    )
    parser.add_argument(
        "--extra", nargs="*", default=[], help="more DMM runs by name, e.g. dmm-head-500it"
    )
    parser.add_argument(
        "--override", nargs="*", default=[], help="Hydra overrides, e.g. experiment=mnist1d_cnn"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = args.trak_models
    quality = (
        {}
        if args.no_lds
        else predictor_lds(str(args.workspace), args.scores, models, args.override)
    )
    timing = json.loads(args.timing.read_text())["results"] if args.timing else {}
    tables, runs, goals = {}, {}, {}
    for forget in args.forget:
        tables[forget], runs[forget] = comparison_table(
            args.workspace, forget, args.scores, models, args.extra
        )
        quiet = timing.get(f"unlearn-{DMM}-{forget}", {}).get("fraction")
        goals[forget] = goal_check(runs[forget], quiet)
        goals[forget]["retain_kernel"] = goal_check(runs[forget], dmm_name=f"{DMM}-retain")
        goals[forget]["head"] = goal_check(runs[forget], dmm_name=HEAD)
        for name in args.extra:
            goals[forget][name] = goal_check(runs[forget], dmm_name=name)
        print(f"\n{forget}\n{tables[forget]}\ngoal: {goals[forget]}")
    if quality:
        tables["predictors"] = meta_table(quality, runs, args.scores, models)
        print(f"\npredictor quality vs unlearning quality\n{tables['predictors']}")
    if args.figure and quality:
        figure(quality, runs, args.figure, args.scores, models)
    record = {"command": command_line(), **environment(1), "predictor_lds": quality}
    record |= {"tables": tables, "goals": goals, "runs": runs}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, record, default=float)


if __name__ == "__main__":
    main()
