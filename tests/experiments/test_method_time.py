"""experiments/method_time.py: a run's chosen unlearner rebuilt from its record and timed."""

import json
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments import method_time
from experiments.dmm_table import dmm_config
from experiments.run_records import read_run
from experiments.unlearning import search_grid, settings_of
from tda.describe import describe
from tda.device import OnDevice
from tests.experiments.entry import run_entry_point, torch_imports_while_unlearning
from unlearn import Unlearner
from unlearn.predictors import HeadDifferencePredictor, architecture

TINY = ("experiment=tiny", "progress=false", "models=2", "tuning.models=1", "klom_floor=false")


def _benchmark(workspace, *overrides):
    run_entry_point("unlearning", workspace, *overrides, base=TINY)


def test_the_rebuilt_unlearner_is_the_one_the_run_chose(tmp_path):
    _benchmark(tmp_path, "unlearner=ft", "tuning.grid=[0.001,0.1]")
    record = read_run(tmp_path, "unlearn-ft-random_10pct")
    _, method = method_time.rebuild(record)
    assert describe(method) == record["method"]
    assert method.loop.optimizer.keywords["lr"] == record["used"]


def test_a_search_over_several_keys_tries_every_combination_and_is_rebuilt(tmp_path):
    _benchmark(
        tmp_path, "unlearner=salun", "tuning.grid=[0.001,0.01]", "+tuning.also.fraction=[0.2,0.8]"
    )
    record = read_run(tmp_path, "unlearn-salun-random_10pct")
    tuning = record["tuning"]
    assert tuning["parameter"] == "loop.optimizer.lr, fraction"
    assert tuning["grid"] == [[0.001, 0.2], [0.001, 0.8], [0.01, 0.2], [0.01, 0.8]]
    assert len(tuning["scores"]) == 4 and record["used"] == tuning["chosen"] in tuning["grid"]
    _, method = method_time.rebuild(record)
    assert describe(method) == record["method"]
    assert [method.loop.optimizer.keywords["lr"], method.fraction] == record["used"]


def test_search_grid_is_the_product_with_the_first_key_slowest():
    tuning = OmegaConf.create({"parameter": "lr", "grid": [1, 2], "also": {"a": [3, 4]}})
    keys, values = search_grid(tuning)
    assert keys == ["lr", "a"] and values == [(1, 3), (1, 4), (2, 3), (2, 4)]
    nested = {"parameter": "s", "grid": [1], "also": {"loop": {"optimizer": {"lr": [5, 6]}}}}
    assert search_grid(OmegaConf.create(nested)) == (["s", "loop.optimizer.lr"], [(1, 5), (1, 6)])
    assert settings_of(keys, [2, 3]) == {"lr": 2, "a": 3}
    single = OmegaConf.create({"parameter": "lr", "grid": [1, 2]})  # a record from before `also`
    assert search_grid(single) == (["lr"], [1, 2]) and settings_of(["lr"], 2) == {"lr": 2}


def _random_train_scores(workspace) -> str:
    """A random training-point score file for the tiny experiment, as score.py records it."""
    cfg = dmm_config(["experiment=tiny"])
    train = instantiate(cfg.data).train
    directory = workspace / "scores"
    directory.mkdir()
    scores = np.random.default_rng(0).normal(size=(len(train), len(train))).astype(np.float32)
    np.save(directory / "random-train.npy", scores)
    record = {"train_fingerprint": train.fingerprint(), "query_fingerprint": train.fingerprint(),
              "architecture": architecture(instantiate(cfg.model)())}  # fmt: skip
    (directory / "random-train.json").write_text(json.dumps(record))
    return "random-train"


def test_a_dmm_run_is_rebuilt_with_its_calibrated_predictor(tmp_path):
    name = _random_train_scores(tmp_path)
    overrides = ("unlearner=dmm", "predictor=scores", f"scores_name={name}")
    _benchmark(tmp_path, *overrides, "tuning.grid=[0.001,0.01]")
    run = read_run(tmp_path, f"unlearn-dmm-{name}-random_10pct")
    _, method = method_time.rebuild(run)
    assert run["calibration"]["forget_scale"] > 0
    assert method.predictor.forget_scale == run["calibration"]["forget_scale"]
    assert describe(method) == run["method"]


def test_a_dmm_runs_predictor_is_rebuilt_with_its_models_on_the_runs_device():
    names = ("results_name=x", "scores_name=x")  # Hydra's choices are not composed here
    cfg = dmm_config([*TINY, "predictor=oracle", "device=cpu", *names])
    record = {"settings": OmegaConf.to_container(cfg, resolve=True)}
    _, method = method_time.rebuild(record | {"calibration": None, "tuning": None})
    factory = method.predictor.model_factory  # its oracles are trained where the run's models are
    assert isinstance(factory, OnDevice) and factory.device == torch.device("cpu")


def test_main_times_each_run_against_retraining(tmp_path, monkeypatch):
    _benchmark(tmp_path, "unlearner=ga", "tuning.grid=[0.001]")
    output = tmp_path / "time.json"
    argv = ["method_time", str(tmp_path), "--runs", "unlearn-ga-random_10pct"]
    monkeypatch.setattr(sys, "argv", [*argv, "--repeats", "2", "--output", str(output)])
    method_time.main()
    result = json.loads(output.read_text())["results"]["unlearn-ga-random_10pct"]
    assert len(result["method_seconds"]) == len(result["retrain_seconds"]) == 2
    assert min(result["method_seconds"] + result["retrain_seconds"]) > 0
    assert result["fraction"] == pytest.approx(
        np.median(result["method_seconds"]) / np.median(result["retrain_seconds"])
    )
    assert result["used"] == 0.001


def test_a_predictors_per_model_work_is_done_before_any_clock_starts(tmp_path, monkeypatch):
    overrides = ("predictor=head_difference", "unlearner.matching=exact", "tuning.parameter=null")
    _benchmark(tmp_path, "unlearner=dmm", *overrides)
    events = []
    prepare, unlearn = HeadDifferencePredictor.prepare_model, Unlearner.unlearn
    monkeypatch.setattr(
        HeadDifferencePredictor, "prepare_model", lambda *a: events.append("prepare") or prepare(*a)
    )
    monkeypatch.setattr(Unlearner, "unlearn", lambda *a: events.append("timed") or unlearn(*a))
    method_time.measure(tmp_path, "unlearn-dmm-head-difference-random_10pct", repeats=2)
    assert events == ["prepare"] * 2 + ["timed"] * 4


def test_an_unfinished_run_is_not_timed(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "unlearn-y.json").write_text(json.dumps({"status": "diverged"}))
    with pytest.raises(ValueError, match="status 'diverged'"):
        method_time.measure(tmp_path, "unlearn-y", repeats=1)


def test_the_first_timed_run_carries_no_one_time_start_up_of_the_process(tmp_path):
    # With the originals on disk nothing is trained before the clock of the first unlearning
    # run; torch's lazy import at the first optimiser (~1 s) must not land in it.
    _benchmark(tmp_path, "unlearner=ft", "tuning.grid=[0.001]")
    argv = ["method_time", str(tmp_path), "--runs", "unlearn-ft-random_10pct", "--repeats", "1"]
    argv += ["--output", str(tmp_path / "time.json")]
    statements = f"from experiments import method_time\nsys.argv = {argv!r}\nmethod_time.main()"
    assert torch_imports_while_unlearning(statements) == []
