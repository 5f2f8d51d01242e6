"""experiments/counterfactual.py on the `tiny` experiment, called in this process.

Two "jobs" (query_batch=0, then 1) share the workspace: the first leaves the plan incomplete and
writes no results; the second completes it and writes the JSON; a rerun trains nothing.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tda.fingerprint import config_fingerprint

REPO = Path(__file__).resolve().parents[2]
PLAN = ["counterfactual.queries=[0,3]", "counterfactual.ks=[5,20]", "counterfactual.seeds=[7,8]"]


def run_counterfactual(workspace: Path, *overrides: str):
    spec = importlib.util.spec_from_file_location("cf", REPO / "experiments" / "counterfactual.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(tiny_config(workspace, *overrides))


def tiny_config(workspace: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "counterfactual",
            overrides=[
                "experiment=tiny",
                "progress=false",
                f"workspace={workspace}",
                "scores_name=noise",
                *PLAN,
                *overrides,
            ],
        )


def write_scores(workspace: Path, query_fingerprint: str | None = None) -> None:
    """Random scores [40, 240] with the provenance record score.py writes beside them."""
    splits = instantiate(tiny_config(workspace).data)
    queries = splits.test.subset(range(40))
    (workspace / "scores").mkdir(parents=True, exist_ok=True)
    np.save(workspace / "scores" / "noise.npy", np.random.default_rng(0).normal(size=(40, 240)))
    record = {
        "query_fingerprint": query_fingerprint or queries.fingerprint(),
        "train_fingerprint": splits.train.fingerprint(),
    }
    (workspace / "scores" / "noise.json").write_text(json.dumps(record))


def test_jobs_share_the_store_and_the_last_one_writes_the_results(tmp_path):
    write_scores(tmp_path)
    results = tmp_path / "results" / "counterfactual-noise.json"
    assert run_counterfactual(tmp_path, "query_batch=0") is None
    assert not results.exists()
    runs = sorted((tmp_path / "counterfactual" / "removed").rglob("*.json"))
    assert len(runs) == 2 * 2 * 2  # query 0: ks x (noise, random) x seeds
    headline = run_counterfactual(tmp_path, "query_batch=[3]")
    record = json.loads(results.read_text())
    assert len(record["records"]) == 16
    assert [(s["removal"], s["k"], s["n_queries"], s["n_seeds"]) for s in record["summaries"]] == [
        ("noise", 5, 2, 2),
        ("noise", 20, 2, 2),
        ("random", 5, 2, 2),
        ("random", 20, 2, 2),
    ]
    assert headline == record["comparisons"][-1]["extra_drop"]["mean"]
    assert record["comparisons"][-1]["k"] == 20 and np.isfinite(headline)
    assert record["settings"]["counterfactual"]["seeds"] == [7, 8]
    stamps = {path: path.stat().st_mtime_ns for path in runs}
    assert run_counterfactual(tmp_path, "seed_batch=8") == headline  # nothing left to train
    assert {path: path.stat().st_mtime_ns for path in runs} == stamps


def test_scores_of_other_queries_and_batches_outside_the_plan_are_refused(tmp_path):
    write_scores(tmp_path, query_fingerprint="other")
    with pytest.raises(ValueError, match="other queries"):
        run_counterfactual(tmp_path)
    write_scores(tmp_path)
    with pytest.raises(ValueError, match="not part of the plan"):
        run_counterfactual(tmp_path, "query_batch=[1]")


def test_aligned_batches_keep_their_own_store_and_full_models(tmp_path):
    write_scores(tmp_path)
    run_counterfactual(tmp_path)
    run_counterfactual(tmp_path, "aligned_batches=true")
    aligned = tmp_path / "counterfactual-aligned"
    manifest = json.loads((aligned / "manifest.json").read_text())
    assert manifest["config"]["aligned_batches"] is True
    assert (
        "aligned_batches"
        not in json.loads((tmp_path / "counterfactual" / "manifest.json").read_text())["config"]
    )
    for seed in (7, 8):  # keeping everything trains exactly the full-data model
        name = f"full/seed{seed}.json"
        assert (aligned / name).read_text() == (tmp_path / "counterfactual" / name).read_text()
    plain = json.loads((tmp_path / "results" / "counterfactual-noise.json").read_text())
    record = json.loads((tmp_path / "results" / "counterfactual-noise-aligned.json").read_text())

    def runs(rows):
        return [(r["query"], r["k"], r["removal"], r["seed"]) for r in rows]

    assert runs(record["records"]) == runs(plain["records"])  # the same plan, other training
    assert [r["output"] for r in record["records"]] != [r["output"] for r in plain["records"]]


def test_the_checkpoints_saved_do_not_count_but_the_training_set_and_recipe_do(tmp_path):
    """``++train.checkpoints=N`` (as TracIn's members are trained) reuses the store's runs."""
    write_scores(tmp_path)
    mine = ("query_batch=0", "seed_batch=7")
    run_counterfactual(tmp_path, *mine)
    store = tmp_path / "counterfactual"
    manifest = json.loads((store / "manifest.json").read_text())
    splits = instantiate(tiny_config(tmp_path).data)
    assert manifest["train_fingerprint"] == splits.train.fingerprint()
    assert manifest["random_seed"] == tiny_config(tmp_path).counterfactual.random_seed
    runs = sorted(store.rglob("*.json"))
    stamps = {path: path.stat().st_mtime_ns for path in runs}
    run_counterfactual(tmp_path, *mine, "++train.checkpoints=2", "++train.save_initial=true")
    assert {path: path.stat().st_mtime_ns for path in sorted(store.rglob("*.json"))} == stamps
    with pytest.raises(ValueError, match="config_fingerprint"):  # a setting that trains otherwise
        run_counterfactual(tmp_path, *mine, "train.epochs=3")


def test_a_store_whose_recipe_still_holds_the_checkpoints_saved_is_reused(tmp_path):
    """Stores made before the checkpoint settings were left out record them in their recipe
    (``++train.checkpoints=N``, as TracIn's members are trained): the same run must reuse their
    runs, not be refused for a recipe that differs only in them."""
    write_scores(tmp_path)
    mine = ("query_batch=0", "seed_batch=7")
    saving = ("++train.checkpoints=2", "++train.save_initial=true")
    run_counterfactual(tmp_path, *mine, *saving)
    store = tmp_path / "counterfactual"
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["config"]["train"] |= {"checkpoints": 2, "save_initial": True}  # as written then
    manifest["config_fingerprint"] = config_fingerprint(manifest["config"])
    del manifest["train_fingerprint"]
    (store / "manifest.json").write_text(json.dumps(manifest, indent=2))
    stamps = {path: path.stat().st_mtime_ns for path in sorted(store.rglob("*.json"))}
    run_counterfactual(tmp_path, *mine, *saving)
    run_counterfactual(tmp_path, *mine)
    assert {path: path.stat().st_mtime_ns for path in sorted(store.rglob("*.json"))} == stamps
    with pytest.raises(ValueError, match="config_fingerprint"):  # a setting that trains otherwise
        run_counterfactual(tmp_path, *mine, "train.epochs=3")
