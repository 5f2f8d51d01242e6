"""The facts-unlearning experiment: its config builds every method, its helpers, a tiny run."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import unlearn
from experiments.facts_unlearning import choose, method_with, people_split
from tda.data.facts import make_facts
from tda.task import LanguageModelingTask
from tests.experiments.entry import run_entry_point

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def cfg():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="facts_unlearning")


def test_every_method_builds_with_the_language_task_and_the_grid_value(cfg):
    for name, kind in [
        ("ga", unlearn.GradientAscent),
        ("graddiff", unlearn.GradientDifference),
        ("npo", unlearn.NegativePreferenceOptimization),
        ("wagle_graddiff", unlearn.WAGLE),
        ("wagle_npo", unlearn.WAGLE),
    ]:
        method = method_with(cfg, name, 0.02)
        assert isinstance(method, kind) and isinstance(method.task, LanguageModelingTask)
        inner = method.base if kind is unlearn.WAGLE else method
        assert isinstance(inner.task, LanguageModelingTask)
        assert inner.loop.optimizer.keywords["lr"] == 0.02


def test_forget_and_proxy_people_are_disjoint_and_whole(cfg):
    facts = make_facts(people=10, seed=0)
    forget, proxy = people_split(facts, 2, seed=0)
    assert len(forget) == len(proxy) == 8 and not set(forget) & set(proxy)
    assert len(set(facts.person[forget])) == 2 and len(set(facts.person[proxy])) == 2
    with pytest.raises(ValueError, match="forget_people=6"):
        people_split(facts, 6, seed=0)


def test_the_proxy_keeps_utility_first_then_takes_the_best_forget_quality():
    search = [
        {"value": 1e-3, "utility_share": 0.99, "log10_forget_quality": -5.0},
        {"value": 1e-2, "utility_share": 0.97, "log10_forget_quality": -1.0},
        {"value": 1e-1, "utility_share": 0.50, "log10_forget_quality": 0.0},
    ]
    assert choose(search, 0.95)["value"] == 1e-2
    assert choose(search, 0.999)["value"] == 1e-3  # none keeps enough: the most utility


def test_a_tiny_run_writes_every_row(tmp_path):
    output = tmp_path / "facts.json"
    overrides = [
        "facts.people=8", "forget_people=2", "train.epochs=3", "seeds=[0]", "grid=[1e-3,1e-2]",
        "model.dim=8", "model.heads=2", "model.layers=1", f"output={output}",
    ]  # fmt: skip
    run_entry_point("facts_unlearning", tmp_path, *overrides, base=["progress=false"])
    record = json.loads(output.read_text())
    results = record["results"]
    rows, search, frontier = results["rows"], results["search"], results["frontier"]
    methods = {"ga", "graddiff", "npo", "wagle_graddiff", "wagle_npo"}
    assert set(rows) == {"original", "retrain", *methods}
    assert all(0 <= row["forget_quality"] <= 1 for row in rows.values())
    assert rows["original"]["time_fraction"] == 0 and rows["graddiff"] in frontier["graddiff"]
    assert [row["value"] for row in search["npo"]] == [row["value"] for row in frontier["npo"]]
    assert record["settings"]["forget_people"] == 2
