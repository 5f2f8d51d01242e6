"""How far each unlearner could get with hindsight: its whole grid scored on the real forget set.

A feasibility check, not a result. Every value of each method's grid is run on the real forget set
F and scored against the real oracles, which no tuned method may look at (METHODS.md's honest
protocol). Beside it, the value the proxy chooses (``unlearn.tune_on_proxy``, as
``experiments/unlearning.py`` does) is scored on F too. If even the value best on F misses a
goal, no honest choice reaches it; if the value best on F meets it, the proxy's choice is what
falls short. The goal checked is issue 5's: SalUn and ℓ1-sparse each below FT, GA and RL on average
gap *and* forget-set KLOM P95, with every method at the proxy's choice, and again with every
method at its own best value on F (by the same gap+klom criterion, now on F); and which values of
SalUn's and ℓ1-sparse's grids, if any, beat FT, GA and RL at their best on F:

    python -m experiments.hindsight mnist1d_mlp --forget random_1pct random_10pct class \\
        --output results/hindsight-mlp.json

Each method's outcome on each forget set is kept in ``${workspace}/hindsight/`` as it finishes,
so a killed run resumes with the next one (kept outcomes are reused only for the same settings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import unlearn
from benchmarks.record import command_line, environment
from experiments.unlearning import build_candidates, search_grid, setting
from tda.atomic import write_json

CONF = Path(__file__).resolve().parents[1] / "conf"
TARGETS, BASELINES = ("salun", "l1_sparse"), ("ft", "ga", "rl")


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
    oracles: ``{"proxy": Selection, "forget": Selection, "seconds": ...}`` as dicts."""
    start = time.perf_counter()
    workspace, splits, forget_set, factory, config = setting(cfg)
    train, seeds = splits.train, list(range(cfg.models))
    originals = unlearn.load_or_train(factory, train, config, seeds, workspace / "models")
    candidates = build_candidates(cfg, {})
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
    return {"proxy": proxy.to_dict(), "forget": on_forget.to_dict(), "seconds": seconds}


def kept_outcome(cfg: DictConfig, path: Path) -> dict:
    """:func:`outcome`, read back from ``path`` if it was kept there for the same settings."""
    settings = OmegaConf.to_container(cfg, resolve=False)
    settings.pop("progress", None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    if path.exists() and json.loads(path.read_text()).get("settings_sha256") == digest:
        return json.loads(path.read_text())["outcome"]
    result = outcome(cfg)
    write_json(path, {"settings_sha256": digest, "outcome": result})
    return result


def on_forget(result: dict, value) -> dict:
    """Average gap and forget KLOM on F of ``value`` of a method's grid (``None`` if diverged)."""
    scored = result["forget"]
    i = [json.dumps(v) for v in scored["grid"]].index(json.dumps(value))
    return {"value": value, "gap": scored["gaps"][i], "klom": scored["kloms"][i]}


def choice(result: dict, rule: str) -> dict:
    """The value a method runs with on F: the proxy's ranking (``rule="proxy"``; a value that
    diverges on F falls back to the next, as ``unlearn_each_stable`` does) or the best on F."""
    ranking = unlearn.Selection.from_dict(result[rule]).ranking()
    for value in ranking:
        row = on_forget(result, value)
        if row["gap"] is not None:
            return row
    raise ValueError(f"every value of the proxy's ranking diverged on F: {ranking}")


def goal(rows: dict[str, dict]) -> dict[str, bool]:
    """Whether each target method has a smaller gap *and* forget KLOM than every baseline."""
    return {
        target: all(
            rows[target]["gap"] < rows[base]["gap"] and rows[target]["klom"] < rows[base]["klom"]
            for base in BASELINES
        )
        for target in TARGETS
        if target in rows and all(base in rows for base in BASELINES)
    }


def reachable(results: dict[str, dict], baselines: dict[str, dict]) -> dict[str, list]:
    """Each target's grid values (any of them, scored on F) with a smaller gap *and* forget KLOM
    than every baseline at ``baselines`` (their rows): empty where no choice at all meets the
    goal against them."""
    out = {}
    for target in TARGETS:
        if target not in results or not all(base in baselines for base in BASELINES):
            continue
        rows = [on_forget(results[target], value) for value in results[target]["forget"]["grid"]]
        out[target] = [
            row["value"]
            for row in rows
            if row["gap"] is not None and goal({target: row, **baselines}).get(target)
        ]
    return out


def summary(results: dict[str, dict]) -> dict:
    """Per rule (the proxy's choices, the best on F): each method's value, gap and KLOM on F,
    and :func:`goal` on them; and the target values :func:`reachable` against the baselines at
    their best on F."""
    out = {}
    for rule in ("proxy", "forget"):
        rows = {method: choice(result, rule) for method, result in results.items()}
        out["proxy_choice" if rule == "proxy" else "best_on_forget"] = {
            "rows": rows,
            "goal": goal(rows),
        }
    out["reachable"] = reachable(results, out["best_on_forget"]["rows"])
    return out


def markdown(forget: str, results: dict[str, dict], verdicts: dict) -> str:
    """One table: each method's proxy choice and best-on-F value, with their gap / KLOM on F."""
    lines = [
        f"**{forget}**",
        "",
        "| method | proxy's value: gap / KLOM F | best on F: gap / KLOM F | lowest gap "
        "| lowest KLOM F |",
        "|---|---|---|---|---|",
    ]
    for method, result in results.items():
        cells = []
        for key in ("proxy_choice", "best_on_forget"):
            row = verdicts[key]["rows"][method]
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
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for key in ("proxy_choice", "best_on_forget"):
        lines.append(f"\ngoal with {key.replace('_', ' ')}: {verdicts[key]['goal']}")
    lines.append(f"values beating every baseline at its best on F: {verdicts['reachable']}")
    return "\n".join(lines)


def method_overrides(given: list[str]) -> dict[str, list[str]]:
    """``{method: [override, ...]}`` from ``METHOD:OVERRIDE`` strings."""
    own: dict[str, list[str]] = {}
    for item in given:
        method, colon, override = item.partition(":")
        if not colon or not method or not override:
            raise ValueError(f"--method-overrides takes METHOD:OVERRIDE, got {item!r}")
        own.setdefault(method, []).append(override)
    return own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="e.g. mnist1d_mlp or mnist1d_cnn")
    parser.add_argument("--forget", nargs="+", default=["random_1pct", "random_10pct", "class"])
    parser.add_argument("--methods", nargs="+", default=[*BASELINES, *TARGETS])
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every run")
    parser.add_argument(
        "--method-overrides",
        nargs="*",
        default=[],
        metavar="METHOD:OVERRIDE",
        help="a Hydra override for one method's runs (e.g. l1_sparse:tuning.grid=[1e-6,1e-5])",
    )
    parser.add_argument("--label", default="", help="names this variant's kept outcomes")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    overrides = [*args.overrides, "progress=false"]
    own = method_overrides(args.method_overrides)
    record = {"command": command_line(), **environment(1), "experiment": args.experiment}
    record["settings"] = {"methods": args.methods, "overrides": overrides, "method_overrides": own}
    record["forget_sets"] = {}
    for forget in args.forget:
        results = {}
        for method in args.methods:
            cfg = compose_method(args.experiment, forget, method, overrides + own.get(method, []))
            name = f"{forget}-{method}{'-' + args.label if args.label else ''}.json"
            results[method] = kept_outcome(cfg, Path(cfg.workspace) / "hindsight" / name)
        verdicts = summary(results)
        print(markdown(forget, results, verdicts), flush=True)
        record["forget_sets"][forget] = {"methods": results, **verdicts}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, record)


if __name__ == "__main__":
    main()
