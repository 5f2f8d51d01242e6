"""How far each unlearner could get with hindsight: its whole grid scored on the real forget set.

A feasibility check, not a result. Every value of each method's grid is run on the real forget set
F and scored against the real oracles, which no tuned method may look at (METHODS.md's honest
protocol). Beside it, the value the proxy chooses (``unlearn.tune_on_proxy``, as
``experiments/unlearning.py`` does; a DMM predictor is calibrated on the same proxy first) is
scored on F too. If even the value best on F misses a goal, no honest choice reaches it; if the
value best on F meets it, the proxy's choice is what falls short. Two goals (``--goal``):

- ``sparse`` (issue 5): SalUn and ℓ1-sparse each below FT, GA and RL on average gap *and*
  forget-set KLOM P95; "best on F" is the best by the search's own criterion (gap+klom).
- ``dmm`` (issue 6): every other method (DMM with its predictors) below FT, GA, GradDiff, SalUn
  and ℓ1-sparse on forget-set KLOM, and within 2x of Oracle Matching's (``om``); "best on F" is
  the lowest forget KLOM.

Each goal is checked with every method at the proxy's choice, again with every method at its best
on F, and for every value of each target's grid against the others at their best on F
(``reachable``). A method is named ``FAMILY[-VARIANT]`` (e.g. ``ft-adam``, with
``--variant-overrides adam:...``) and runs the unlearner ``FAMILY`` unless given as
``NAME=UNLEARNER`` (e.g. ``om=dmm`` with ``--method-overrides om:predictor=oracle``); a family's
variants are one search (``unlearn.tuning.join_selections``: the proxy's choice is the variant
holding the best proxy score, its best on F the best over every variant's values):

    python -m experiments.hindsight mnist1d_mlp --forget random_1pct random_10pct class \\
        --output results/hindsight-mlp.json

Each method's outcome on each forget set is kept in ``${workspace}/hindsight/`` as it finishes,
so a killed run resumes with the next one (kept outcomes are reused only for the same settings,
library versions and resolved device, as a search journal of ``experiments/unlearning.py`` is).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import unlearn
from benchmarks.record import command_line, environment
from experiments.unlearning import (
    build_candidates,
    calibrate_predictor,
    run_digest,
    search_grid,
    setting,
    shared_parts,
)
from tda.atomic import write_json

CONF = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Goal:
    """Targets strictly below every baseline on each of ``measures`` (``"gap"``, ``"klom"``), and,
    with a ``reference``, forget KLOM at most ``within`` times the reference's.

    Attributes:
        baselines: the families every target must beat.
        measures: what they are beaten on.
        targets: the families checked; ``None``: every family but the baselines and reference.
        reference: the family whose forget KLOM bounds the targets' (``within`` times).
        rank_by: how a method's best value on F is chosen: ``"score"`` (the search's criterion)
            or ``"klom"`` (lowest forget KLOM).
    """

    baselines: tuple[str, ...]
    measures: tuple[str, ...]
    targets: tuple[str, ...] | None = None
    reference: str | None = None
    within: float = 2.0
    rank_by: str = "score"

    def targets_of(self, families) -> list[str]:
        """The target families among ``families``."""
        if self.targets is not None:
            return [family for family in self.targets if family in families]
        others = {*self.baselines, self.reference}
        return [family for family in families if family not in others]

    @property
    def needed(self) -> list[str]:
        """The families a check needs a row of: the baselines and the reference."""
        return [*self.baselines, *([self.reference] if self.reference else [])]

    def met(self, rows: dict[str, dict]) -> dict[str, bool]:
        """Whether each target's row beats every baseline's (and is within the reference's
        bound); nothing is checked unless every baseline (and the reference) has a row."""
        if not all(family in rows for family in self.needed):
            return {}
        return {target: self.beats(rows[target], rows) for target in self.targets_of(rows)}

    def beats(self, row: dict, rows: dict[str, dict]) -> bool:
        """Whether ``row`` meets the goal against the baselines' and reference's ``rows``."""
        below = all(
            row[measure] < rows[base][measure]
            for base in self.baselines
            for measure in self.measures
        )
        if self.reference is None:
            return below
        return below and row["klom"] <= self.within * rows[self.reference]["klom"]


GOALS = {
    "sparse": Goal(("ft", "ga", "rl"), ("gap", "klom"), targets=("salun", "l1_sparse")),
    "dmm": Goal(
        ("ft", "ga", "graddiff", "salun", "l1_sparse"), ("klom",), reference="om", rank_by="klom"
    ),
}


def compose_method(experiment: str, forget: str, method: str, overrides: list[str]) -> DictConfig:
    """``experiments/unlearning.py``'s configuration of one method on one forget set."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "unlearn",
            [f"experiment={experiment}", f"forget={forget}", f"unlearner={method}", *overrides],
        )
    if cfg.tuning.parameter is None:
        raise ValueError(f"unlearner={method} searches no hyperparameter: nothing to compare")
    return cfg


def outcome(cfg: DictConfig) -> dict:
    """The method's grid scored on the proxy (its honest choice) and on F against the real
    oracles: ``{"proxy": Selection, "forget": Selection, "seconds": ..., "calibration": ...}``
    as dicts (``calibration``: a DMM predictor's scales fit on the proxy, else ``None``)."""
    start = time.perf_counter()
    workspace, splits, forget_set, factory, config = setting(cfg)
    train, seeds = splits.train, list(range(cfg.models))
    originals = unlearn.load_or_train(factory, train, config, seeds, workspace / "models")
    shared = shared_parts(cfg)
    calibration = calibrate_predictor(cfg, shared, originals, train, forget_set, workspace)
    candidates = build_candidates(cfg, shared)
    label, count = ", ".join(search_grid(cfg.tuning)[0]), min(cfg.tuning.models, cfg.models)
    proxy = unlearn.tune_on_proxy(
        label, candidates, forget_set, originals[:count], train, splits.test,
        seeds=seeds[:count], model_factory=factory, config=config,
        oracle_seeds=[cfg.oracle_seed + i for i in range(count)],
        oracle_root=workspace / "oracles", criterion=cfg.tuning.criterion,
        proxies=cfg.tuning.proxies,
    )  # fmt: skip
    forget = forget_set.indices(train)
    oracle_seeds = [cfg.oracle_seed + i for i in range(cfg.models)]
    oracles = unlearn.load_or_train_oracles(
        factory, train, forget, config, oracle_seeds, workspace / "oracles"
    ).models
    split = unlearn.ForgetSplit.of(train, unlearn.forget_request(forget, train))
    test = forget_set.evaluation_test(splits.test)
    on_forget = unlearn.select_on_proxy(
        label, candidates, originals, train, forget,
        unlearn.metrics_of(oracles, split, test, seeds=oracle_seeds), test, seeds=seeds,
        proxy_oracle_margins=unlearn.margins_of(oracles, split.forget),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "proxy": proxy.to_dict(),
        "forget": on_forget.to_dict(),
        "seconds": seconds,
        "calibration": calibration,
    }


def kept_outcome(cfg: DictConfig, path: Path) -> dict:
    """:func:`outcome`, read back from ``path`` if it was kept there for the same run
    (:func:`~experiments.unlearning.run_digest`: settings, library versions, resolved device;
    the settings unresolved, since a composed configuration's ``${hydra:...}`` names resolve
    only inside a Hydra run)."""
    digest = run_digest(OmegaConf.to_container(cfg, resolve=False), cfg.device)
    if path.exists() and json.loads(path.read_text()).get("settings_sha256") == digest:
        return json.loads(path.read_text())["outcome"]
    result = outcome(cfg)
    write_json(path, {"settings_sha256": digest, "outcome": result})
    return result


def family(name: str) -> str:
    """The method family of a method name ``FAMILY[-VARIANT]``."""
    return name.partition("-")[0]


def families(results: dict[str, dict]) -> dict[str, dict]:
    """``{family: outcome}``: a family's several variants joined into one search (each value
    becomes ``[name, value]``); a family of one method keeps its outcome as it is."""
    grouped: dict[str, dict[str, dict]] = {}
    for name, result in results.items():
        grouped.setdefault(family(name), {})[name] = result
    joined = {}
    for name, members in grouped.items():
        if len(members) == 1:
            joined[name] = next(iter(members.values()))
            continue
        joined[name] = {
            rule: unlearn.tuning.join_selections(
                {
                    member: unlearn.Selection.from_dict(result[rule])
                    for member, result in members.items()
                }
            ).to_dict()
            for rule in ("proxy", "forget")
        }
    return joined


def on_forget(result: dict, value) -> dict:
    """Average gap and forget KLOM on F of ``value`` of a method's grid (``None`` if diverged)."""
    scored = result["forget"]
    i = [json.dumps(v) for v in scored["grid"]].index(json.dumps(value))
    return {"value": value, "gap": scored["gaps"][i], "klom": scored["kloms"][i]}


def choice(result: dict, rule: str, rank_by: str = "score") -> dict:
    """The value a method runs with on F: the proxy's ranking (``rule="proxy"``; a value that
    diverges on F falls back to the next, as ``unlearn_each_stable`` does) or the best on F, by
    the search's criterion (``rank_by="score"``) or by the lowest forget KLOM (``"klom"``)."""
    selection = unlearn.Selection.from_dict(result[rule])
    if rule == "forget" and rank_by == "klom":
        rows = [on_forget(result, value) for value in selection.grid]
        ranking = [row["value"] for row in sorted(rows, key=_by_klom) if row["klom"] is not None]
    else:
        ranking = selection.ranking()
    for value in ranking:
        row = on_forget(result, value)
        if row["gap"] is not None:
            return row
    whose = "the proxy's ranking" if rule == "proxy" else "the grid"
    raise ValueError(f"every value of {whose} diverged on F: {ranking or selection.grid}")


def _by_klom(row: dict) -> tuple:
    """Sort key: lowest forget KLOM, then smallest gap; diverged values (``None``) last."""
    return (row["klom"] is None, row["klom"] or 0.0, row["gap"] or 0.0)


def reachable(results: dict[str, dict], others: dict[str, dict], goal: Goal) -> dict[str, list]:
    """Each target's grid values (any of them, scored on F) that meet ``goal`` against the other
    methods' rows ``others``: empty where no choice at all meets it against them."""
    if not all(name in others for name in goal.needed):
        return {}
    out = {}
    for target in goal.targets_of(results):
        rows = [on_forget(results[target], value) for value in results[target]["forget"]["grid"]]
        out[target] = [
            row["value"] for row in rows if row["gap"] is not None and goal.beats(row, others)
        ]
    return out


def summary(results: dict[str, dict], goal: Goal) -> dict:
    """Per rule (the proxy's choices, the best on F): each family's value, gap and KLOM on F,
    and whether ``goal`` is met on them; and the target values :func:`reachable` against the
    other families at their best on F."""
    joined, out = families(results), {}
    for rule in ("proxy", "forget"):
        rows = {name: choice(result, rule, goal.rank_by) for name, result in joined.items()}
        key = "proxy_choice" if rule == "proxy" else "best_on_forget"
        out[key] = {"rows": rows, "goal": goal.met(rows)}
    out["reachable"] = reachable(joined, out["best_on_forget"]["rows"], goal)
    return out


def markdown(forget: str, results: dict[str, dict], verdicts: dict) -> str:
    """One table: each family's proxy choice and best-on-F value, with their gap / KLOM on F."""
    lines = [
        f"**{forget}**",
        "",
        "| method | proxy's value: gap / KLOM F | best on F: gap / KLOM F | lowest gap "
        "| lowest KLOM F |",
        "|---|---|---|---|---|",
    ]
    for name, result in families(results).items():
        cells = []
        for key in ("proxy_choice", "best_on_forget"):
            row = verdicts[key]["rows"][name]
            cells.append(f"{row['value']}: {row['gap']:.2f} / {row['klom']:.2f}")
        scored = result["forget"]
        for measure in ("gaps", "kloms"):
            pairs = [
                (m, v)
                for m, v in zip(scored[measure], scored["grid"], strict=True)
                if m is not None
            ]
            lowest, value = min(pairs, key=lambda pair: pair[0])
            cells.append(f"{lowest:.2f} ({value})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for key in ("proxy_choice", "best_on_forget"):
        lines.append(f"\ngoal with {key.replace('_', ' ')}: {verdicts[key]['goal']}")
    lines.append(
        f"values meeting the goal against the others at their best on F: {verdicts['reachable']}"
    )
    return "\n".join(lines)


def prefixed_overrides(given: list[str], flag: str) -> dict[str, list[str]]:
    """``{key: [override, ...]}`` from ``KEY:OVERRIDE`` strings (``flag`` names them in errors)."""
    own: dict[str, list[str]] = {}
    for item in given:
        key, colon, override = item.partition(":")
        if not colon or not key or not override:
            raise ValueError(f"{flag} takes NAME:OVERRIDE, got {item!r}")
        own.setdefault(key, []).append(override)
    return own


def method_spec(spec: str) -> tuple[str, str]:
    """``(name, unlearner)`` of ``NAME=UNLEARNER``, or of ``FAMILY[-VARIANT]`` (its family's)."""
    name, equals, unlearner = spec.partition("=")
    if equals and (not name or not unlearner):
        raise ValueError(f"--methods takes NAME=UNLEARNER or FAMILY[-VARIANT], got {spec!r}")
    return name, unlearner if equals else family(name)


def overrides_of(name: str, own: dict, variants: dict) -> list[str]:
    """The overrides of method ``name``: its variant's (the part after ``-``), then its own."""
    variant = name.partition("-")[2]
    return [*variants.get(variant, []), *own.get(name, [])] if variant else own.get(name, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="e.g. mnist1d_mlp or mnist1d_cnn")
    parser.add_argument("--goal", choices=sorted(GOALS), default="sparse")
    parser.add_argument("--forget", nargs="+", default=["random_1pct", "random_10pct", "class"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="FAMILY[-VARIANT] or NAME=UNLEARNER (default: the sparse goal's five methods)",
    )
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every run")
    parser.add_argument(
        "--method-overrides",
        nargs="*",
        default=[],
        metavar="NAME:OVERRIDE",
        help="a Hydra override for one method's runs (e.g. l1_sparse:tuning.grid=[1e-6,1e-5])",
    )
    parser.add_argument(
        "--variant-overrides",
        nargs="*",
        default=[],
        metavar="VARIANT:OVERRIDE",
        help="a Hydra override for every method named FAMILY-VARIANT (before its own)",
    )
    parser.add_argument("--label", default="", help="names this variant's kept outcomes")
    parser.add_argument(
        "--output", type=Path, help="where the JSON record goes (default: print the tables only)"
    )
    args = parser.parse_args()
    goal = GOALS[args.goal]
    if args.methods is None and goal.targets is None:
        parser.error(f"--goal {args.goal} needs --methods: its targets and its baselines")
    methods = dict(map(method_spec, args.methods or [*goal.needed, *goal.targets]))
    overrides = [*args.overrides, "progress=false"]
    own = prefixed_overrides(args.method_overrides, "--method-overrides")
    variants = prefixed_overrides(args.variant_overrides, "--variant-overrides")
    record = {"command": command_line(), **environment(1), "experiment": args.experiment}
    record["settings"] = {
        "goal": args.goal, "methods": methods, "overrides": overrides,
        "method_overrides": own, "variant_overrides": variants,
    }  # fmt: skip
    record["forget_sets"] = {}
    for forget in args.forget:
        results = {}
        for name, unlearner in methods.items():
            given = overrides + overrides_of(name, own, variants)
            cfg = compose_method(args.experiment, forget, unlearner, given)
            kept = f"{forget}-{name}{'-' + args.label if args.label else ''}.json"
            results[name] = kept_outcome(cfg, Path(cfg.workspace) / "hindsight" / kept)
        verdicts = summary(results, goal)
        print(markdown(forget, results, verdicts), flush=True)
        record["forget_sets"][forget] = {"methods": results, **verdicts}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, record)


if __name__ == "__main__":
    main()
