"""Which Fisher K-FAC / EK-FAC should default to, chosen by LDS on held-out ground truth.

The candidates are the two Fishers of :class:`~tda.curvature.EKFACSolver` and
:class:`~tda.curvature.KFACSolver`: labels sampled from the model's softmax (the true Fisher) and
the training labels (the empirical Fisher). As :func:`tda.select_damping` does for damping, the
ground-truth subsets are split in two with its convention (``split="subsets"``, holdout 0.5,
seed 0): each solver's Fisher is chosen by LDS on the *selection* half and every candidate's LDS
is reported on the disjoint *report* half, where the choice has not looked.

Settings are ``bench_methods``'s, on its ground truth and members: MNIST-1D + MLP (M = 1 and 5
members, default damping 0.1 x mean eigenvalue) and digits + float64 logistic regression
(damping = its L2 coefficient). Score matrices are kept in ``bench_methods``'s workspace
(``runs/bench_methods/scores/``), shared with it where the method is the same.

Run from the repository root: ``python -m benchmarks.bench_fisher [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_lds, bench_methods
from benchmarks.bench_methods import Bench, cached, influence
from benchmarks.record import available_cores, markdown_table, output_path, write_record
from tda import (
    EKFACSolver,
    InfluenceFunction,
    KFACSolver,
    LDSResult,
    lds,
    load_member,
    select_damping,
)
from tda.models import MLP

FISHERS = {"sampled-label Fisher": True, "empirical Fisher": False}
SOLVERS = {"IF EK-FAC": EKFACSolver, "IF K-FAC": KFACSolver}
RELATIVE_GRID = (1e-4, 1e-3, 1e-2, 0.1, 1.0)  # damping / mean eigenvalue (the default is 0.1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags ``bench_methods``'s setup functions read, plus the split's."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_fisher", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="bench_methods's quick workspace and settings")
    add("--out", help="JSON path (default results/fisher-choice.json; --quick: runs/quick/)")
    add("--threads", type=int, default=available_cores(), help="torch threads")
    add("--fresh-scores", action="store_true", help="recompute every cached score matrix")
    add("--models", type=int, nargs="+", default=[1, 5], help="M on MNIST-1D")
    add("--holdout", type=float, default=0.5, help="fraction of subsets held out to report")
    add("--split-seed", type=int, default=0, help="seed of the subset split (select_damping's)")
    args = parser.parse_args(argv)
    defaults = bench_methods.parse_args(["--quick"] if args.quick else [])
    for name in ("workspace", "digits_subsets", "digits_queries", "digits_l2"):
        setattr(args, name, getattr(defaults, name))
    if args.quick:
        args.models = [1, 2]
    return args


@dataclass(frozen=True)
class Candidate:
    """One solver with one Fisher: its row name and its solver at the setting's damping."""

    solver: str
    fisher: str
    damping: float | None

    @property
    def name(self) -> str:
        return f"{self.solver} ({self.fisher})"

    def make(self):
        return SOLVERS[self.solver](damping=self.damping, sampled_labels=FISHERS[self.fisher])


def ensemble_scores(bench: Bench, candidate: Candidate, members, score_one, counts):
    """``{M: mean scores of the first M members}`` and ``{M: their seconds}``, cached per member."""
    key = candidate.name.replace(" ", "_").replace("/", "-")
    total, seconds, means, times = None, 0.0, {}, {}
    for index, member in enumerate(members[: max(counts)]):
        path = bench.root / "scores" / bench.setting / key / f"model-{index}.npz"
        scores, took, _ = cached(path, lambda m=member: score_one(m), bench.fresh)
        total, seconds = (scores if total is None else total + scores), seconds + took
        if index + 1 in counts:
            means[index + 1], times[index + 1] = total / (index + 1), seconds
    return means, times


def _summary(result: LDSResult) -> dict:
    return {"lds": result.mean, "ci_low": result.ci_low, "ci_high": result.ci_high}


def choose(setting: str, models: int, named: dict[str, np.ndarray], truth, args) -> dict:
    """``select_damping`` over the candidates' indices: its split, its selection LDS per
    candidate, its pick; plus every candidate's LDS on the report half and on all subsets."""
    masks, outputs = truth
    names = list(named)
    choice = select_damping(lambda index: named[names[int(index)]], range(len(names)), masks,
        outputs, holdout_fraction=args.holdout, seed=args.split_seed)  # fmt: skip
    report = choice.report_subsets
    rows = []
    for name, selection in zip(names, choice.selection, strict=True):
        held_out = lds(named[name], masks[report], outputs[report], seed=args.split_seed)
        rows.append({"setting": setting, "method": name, "models": models,
            "selection": _summary(selection), "report": _summary(held_out),
            "all_subsets": _summary(lds(named[name], masks, outputs))})  # fmt: skip
    return {"setting": setting, "models": models, "chosen": names[int(choice.damping)],
        "rows": rows, "selection_subsets": choice.selection_subsets.tolist(),
        "report_subsets": report.tolist()}  # fmt: skip


def compare(bench: Bench, solver: str, damping, members, score_of, counts, args) -> list[dict]:
    """Sampled-label vs empirical Fisher of one solver at each M, chosen on the selection half."""
    by_fisher = {}
    for fisher in FISHERS:
        candidate = Candidate(solver, fisher, damping)
        scores, seconds = ensemble_scores(bench, candidate, members, score_of(candidate), counts)
        by_fisher[candidate.name] = (scores, seconds)
    choices = []
    for models in counts:
        named = {name: scores[models] for name, (scores, _) in by_fisher.items()}
        choice = choose(bench.setting, models, named, bench.truth, args)
        for row in choice["rows"]:
            row["seconds"] = by_fisher[row["method"]][1][models]
        choices.append(choice)
    return choices


def run_mnist(args) -> tuple[list[dict], dict]:
    train, queries, _, truth, finals, info = bench_methods.mnist_setup(args)
    bench_lds.warm_up_process(train)
    bench = Bench("MNIST-1D", truth, args.workspace, args.fresh_scores, {})
    model_of = lambda checkpoint: load_member(MLP, checkpoint)  # noqa: E731
    score_of = lambda c: influence(c.make(), model_of, train, queries)  # noqa: E731
    choices = []
    for solver in SOLVERS:
        choices += compare(bench, solver, None, finals, score_of, args.models, args)
    sweeps = damping_sweep(bench, finals, model_of, train, queries, args.models, args)
    return choices, {"workspace": info["workspace"], "ground_truth": info["ground_truth"],
        "damping_sweeps": sweeps}  # fmt: skip


def run_digits(args) -> tuple[list[dict], dict]:
    train, queries, model, truth, info = bench_methods.digits_setup(args)
    bench = Bench("digits", truth, args.workspace, args.fresh_scores, {})
    same = lambda member: member  # noqa: E731
    score_of = lambda c: influence(c.make(), same, train, queries)  # noqa: E731
    choices = []
    for solver in SOLVERS:
        choices += compare(bench, solver, args.digits_l2, [model], score_of, [1], args)
    return choices, info


def redamped_scores(model, train, queries, fisher: str, parameters=None) -> np.ndarray:
    """``[len(RELATIVE_GRID), q, n]``: EK-FAC fitted once (through ``parameters``, default all),
    scored at each relative damping."""
    solver = EKFACSolver(sampled_labels=FISHERS[fisher])
    attributor = InfluenceFunction(solver, parameters=parameters).fit(model, train)
    fitted = attributor.fitted_solver
    stacked = []
    for relative in RELATIVE_GRID:
        attributor.fitted_solver = replace(fitted, damping=relative * fitted.mean_eigenvalue)
        stacked.append(attributor.score(queries).double().numpy())
    return np.stack(stacked)


def damping_sweep(bench: Bench, members, model_of, train, queries, counts, args) -> list[dict]:
    """Each Fisher's EK-FAC damping (relative to the mean eigenvalue) chosen on the selection
    half by ``select_damping`` itself, at each M; the choice's LDS on the report half."""
    sweeps = []
    for fisher in FISHERS:
        key = f"IF_EK-FAC_({fisher.replace(' ', '_')})_damping_grid"
        total = None
        for index, member in enumerate(members[: max(counts)]):
            path = bench.root / "scores" / bench.setting / key / f"model-{index}.npz"
            compute = lambda m=member, f=fisher: redamped_scores(model_of(m), train, queries, f)  # noqa: E731
            scores, _, _ = cached(path, compute, bench.fresh)
            total = scores if total is None else total + scores
            if index + 1 in counts:
                stacked = total / (index + 1)
                choice = select_damping(lambda r, s=stacked: s[RELATIVE_GRID.index(r)],
                    RELATIVE_GRID, *bench.truth, holdout_fraction=args.holdout,
                    seed=args.split_seed)  # fmt: skip
                sweeps.append({"setting": bench.setting, "method": f"IF EK-FAC ({fisher})",
                    "models": index + 1, "relative_grid": list(RELATIVE_GRID),
                    "selection": [_summary(r) for r in choice.selection],
                    "chosen_relative_damping": choice.damping,
                    "report": _summary(choice.report)})  # fmt: skip
    return sweeps


def sweep_table(sweeps: list[dict]) -> str:
    cells = [[s["method"], s["models"], ", ".join(f"{v['lds']:.3f}" for v in s["selection"]),
        f"{s['chosen_relative_damping']:g}", _cell(s["report"])] for s in sweeps]  # fmt: skip
    grid = "/".join(f"{value:g}" for value in RELATIVE_GRID)
    header = ["method", "M", f"selection LDS at {grid} x mean eigenvalue", "chosen", "report half"]
    return markdown_table(header, cells)


def table(choices: list[dict]) -> str:
    cells = []
    for choice in choices:
        for row in choice["rows"]:
            mark = " (chosen)" if row["method"] == choice["chosen"] else ""
            cells.append([row["setting"], row["method"] + mark, row["models"],
                *(_cell(row[part]) for part in ("selection", "report", "all_subsets")),
                f"{row['seconds']:.1f}"])  # fmt: skip
    header = ["setting", "method", "M", "selection half", "report half", "all subsets", "time (s)"]
    return markdown_table(header, cells)


def _cell(summary: dict) -> str:
    return f"{summary['lds']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    mnist, mnist_info = run_mnist(args)
    digits, digits_info = run_digits(args)
    choices = mnist + digits
    results = {"choices": choices, "mnist1d": mnist_info, "digits": digits_info,
        "total_seconds": time.perf_counter() - start}  # fmt: skip
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings = {**flags, "split": "subsets (select_damping's convention)",
        "damping": "MNIST-1D: default 0.1 x mean eigenvalue; digits: l2",
        "members": "MNIST-1D: bench_lds members, seeds 0..M-1; digits: the one L-BFGS fit",
        "label_sampling_seed": 0}  # fmt: skip
    path = output_path("fisher-choice", args.quick, args.out)
    write_record(path, "fisher-choice", settings, args.threads, results)
    print(table(choices) + "\n\n" + sweep_table(mnist_info["damping_sweeps"]))
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
