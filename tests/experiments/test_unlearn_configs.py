"""The unlearning configs: every unlearner and forget-set option builds; a tiny benchmark runs."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

import unlearn
from tda.device import OnDevice
from tests.experiments.entry import torch_imports_while_unlearning

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
UNLEARNERS = {
    "retrain": unlearn.ExactRetraining,
    "ft": unlearn.FineTune,
    "ga": unlearn.GradientAscent,
    "rl": unlearn.RandomLabels,
    "graddiff": unlearn.GradientDifference,
    "npo": unlearn.NegativePreferenceOptimization,
    "wagle": unlearn.WAGLE,
    "wagle_npo": unlearn.WAGLE,
    "salun": unlearn.SalUn,
    "l1_sparse": unlearn.L1Sparse,
    "prune_then_unlearn": unlearn.PruneThenUnlearn,
    "dmm": unlearn.DatamodelMatching,
}
PREDICTORS = {
    "trak": unlearn.TRAKPredictor,
    "datamodels": unlearn.DatamodelPredictor,
    "oracle": unlearn.OraclePredictor,
    "scores": unlearn.ScoresPredictor,
    "head": unlearn.HeadRefitPredictor,
    "head_absent": unlearn.HeadRefitPredictor,
    "head_difference": unlearn.HeadDifferencePredictor,
}
# DMM's predictors build small ensembles, ground truths and oracles for the tiny experiment; six
# subsets give datamodels too poor to calibrate (their fit is refused), so they run unscaled.
TINY_DMM = (
    "dmm.models=2",
    "predictor.count=6",
    "predictor.fit_subsets=5",
    "calibrate_predictor=false",
)
FORGET_SETS = {
    "random_1pct": unlearn.RandomForgetSet,
    "random_10pct": unlearn.RandomForgetSet,
    "class": unlearn.ClassForgetSet,
}
TINY = ("experiment=tiny", "progress=false", "models=2", "tuning.models=1")


def compose_unlearn(*overrides: str):
    """Compose ``conf/unlearn.yaml`` as ``@hydra.main`` does (``${hydra:...}`` resolves)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("unlearn", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    yield
    HydraConfig.instance().cfg = None


def test_every_unlearner_and_forget_option_is_covered():
    assert {p.stem for p in (CONF / "unlearner").glob("*.yaml")} == set(UNLEARNERS)
    assert {p.stem for p in (CONF / "forget").glob("*.yaml")} == set(FORGET_SETS)
    assert {p.stem for p in (CONF / "predictor").glob("*.yaml")} == set(PREDICTORS)


@pytest.mark.parametrize("name", sorted(UNLEARNERS))
def test_unlearner_option_builds_its_method_and_every_grid_value(tmp_path, name):
    extra = ["dmm.models=2"] if name == "dmm" else []
    cfg = compose_unlearn("experiment=tiny", f"unlearner={name}", f"workspace={tmp_path}", *extra)
    assert type(instantiate(cfg.unlearner)) is UNLEARNERS[name]
    if cfg.tuning.parameter is None:
        assert name == "retrain"
        return
    assert len(cfg.tuning.grid) >= 2
    for value in cfg.tuning.grid:
        variant = OmegaConf.create(OmegaConf.to_container(cfg.unlearner, resolve=True))
        OmegaConf.update(variant, cfg.tuning.parameter, value)
        built = instantiate(variant)
        target = built
        for part in cfg.tuning.parameter.split("."):
            target = target.keywords[part] if hasattr(target, "keywords") else getattr(target, part)
        assert target == value and isinstance(value, float)


@pytest.mark.parametrize("name", ["rl", "salun"])
def test_random_label_methods_take_their_batch_recipe_from_the_config(name):
    default = instantiate(compose_unlearn("experiment=tiny", f"unlearner={name}").unlearner)
    mixed = compose_unlearn("experiment=tiny", f"unlearner={name}", "unlearner.batches=mixed")
    assert default.batches == "separate" and instantiate(mixed.unlearner).batches == "mixed"


@pytest.mark.parametrize("name", sorted(FORGET_SETS))
def test_forget_option_builds_its_forget_set(name):
    cfg = compose_unlearn("experiment=tiny", f"forget={name}")
    forget_set = instantiate(cfg.forget)
    assert type(forget_set) is FORGET_SETS[name]
    train = instantiate(cfg.data).train
    assert 0 < len(forget_set.indices(train)) < len(train)


def test_the_default_is_ft_on_a_random_tenth_with_twenty_models_and_a_floor():
    cfg = compose_unlearn()
    assert cfg.experiment_name == "mnist1d_mlp" and cfg.models == 20 and cfg.klom_floor
    assert cfg.results_name == "unlearn-ft-random_10pct"
    assert instantiate(cfg.forget) == unlearn.RandomForgetSet(0.1)


def _load_unlearning_module():
    """``experiments/unlearning.py`` loaded afresh."""
    spec = importlib.util.spec_from_file_location("unlearning", REPO / "experiments/unlearning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_in_process(workspace: Path, *overrides: str) -> dict:
    module = _load_unlearning_module()
    cfg = compose_unlearn(*TINY, f"workspace={workspace}", *overrides)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it over: Hydra's node lives in HydraConfig
    gap = module.main(cfg)
    record = json.loads((workspace / "results" / f"{cfg.results_name}.json").read_text())
    assert record.get("average_gap", math.inf) == gap
    return record


def _numbers(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _numbers(value)
    elif isinstance(node, float | int) and not isinstance(node, bool):
        yield node


def test_a_tiny_benchmark_writes_finite_numbers_and_resumes(tmp_path):
    forget = unlearn.ClassForgetSet(0).indices(instantiate(compose_unlearn(*TINY).data).train)
    record = _run_in_process(tmp_path, "unlearner=salun", "forget=class")
    assert record["forget_size"] == len(forget) and record["seeds"] == [0, 1]
    assert record["status"] == "ok" and record["diverged"] == []
    assert record["used"] == record["tuning"]["chosen"]
    assert record["oracle_seeds"] == [1000, 1001, 1002, 1003]
    for key in ("UA", "RA", "TA", "MIA"):
        assert 0.0 <= record["metrics"][key]["mean"] <= 100.0
        assert record["metrics"][key]["n"] == 2
    klom = record["klom"]
    for split in ("forget", "retain", "validation"):
        assert klom[split] >= 0.0 and klom[f"{split}_floor"] >= 0.0
    assert record["time_fraction"]["mean"] > 0.0
    assert (
        record["original"]["metrics"]["UA"]["n"] == 2 and record["original"]["klom"]["forget"] >= 0
    )
    tuning = record["tuning"]
    assert tuning["parameter"] == "loop.optimizer.lr" and tuning["chosen"] in tuning["grid"]
    assert len(tuning["scores"]) == len(tuning["grid"])
    assert all(math.isfinite(value) for value in _numbers(record))
    assert record["settings"]["forget"]["label"] == 0
    # A second run trains nothing: the oracles' recorded times are read back unchanged.
    again = _run_in_process(tmp_path, "unlearner=retrain", "forget=class", "klom_floor=false")
    assert again["oracle_seeds"] == [1000, 1001] and again["tuning"] is None
    directory = unlearn.oracle_directory(tmp_path / "oracles", forget)
    recorded = [
        json.loads((directory / f"seconds-seed-{seed}.json").read_text())["seconds"]
        for seed in (1000, 1001)
    ]
    assert again["oracle_seconds"] == pytest.approx(sum(recorded) / 2, rel=1e-12)


KILLED = ("unlearner=ft", "klom_floor=false", "tuning.grid=[0.001,0.1]")


def _kill_after_the_search(tmp_path, monkeypatch) -> None:
    """Run KILLED until its search is journaled and kill it there; later searches must not
    run again (they raise)."""
    stable = unlearn.unlearn_each_stable

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran again")

    monkeypatch.setattr(unlearn, "unlearn_each_stable", killed)
    with pytest.raises(KeyboardInterrupt):
        _run_in_process(tmp_path, *KILLED)
    monkeypatch.setattr(unlearn, "unlearn_each_stable", stable)
    monkeypatch.setattr(unlearn.tuning, "unlearn_each", no_search)


def test_a_run_killed_after_its_search_resumes_from_the_journal(tmp_path, monkeypatch):
    _kill_after_the_search(tmp_path, monkeypatch)
    journal = tmp_path / "results" / ".search" / "unlearn-ft-random_10pct"
    assert len(list(journal.glob("*.json"))) == 2  # one per grid value
    other = ("unlearner=ft", "klom_floor=false", "tuning.grid=[0.01]")
    with pytest.raises(ValueError, match="another configuration is writing results_name="):
        _run_in_process(tmp_path, *other)  # the killed run's claim stands for its resumption
    record = _run_in_process(tmp_path, *KILLED)
    assert record["status"] == "ok" and record["tuning"]["grid"] == [0.001, 0.1]
    assert not journal.exists()  # cleared once the record is written
    with pytest.raises(ValueError, match=r"records a run with other \['tuning'\]"):
        _run_in_process(tmp_path, *other)  # would have replaced the finished record


def test_a_killed_run_resumes_when_restarted_with_other_threads_or_progress(tmp_path, monkeypatch):
    # progress and threads are VOLATILE (they change no record): the journal and the claim of
    # results_name must not depend on them, or the restart is refused as another configuration
    _kill_after_the_search(tmp_path, monkeypatch)
    threads = torch.get_num_threads()
    try:
        record = _run_in_process(tmp_path, *KILLED, "threads=2", "progress=true")
    finally:
        torch.set_num_threads(threads)
    assert record["status"] == "ok" and record["tuning"]["grid"] == [0.001, 0.1]
    assert not (tmp_path / "results" / ".search" / "unlearn-ft-random_10pct").exists()


@pytest.mark.parametrize("name", ["datamodels", "oracle", "trak"])
def test_the_dmm_predictor_builds_its_models_on_the_runs_device(name, monkeypatch):
    # device=auto must reach the predictor's members, oracles and retrainings as it reaches every
    # other factory of the run (on CUDA they ran on the CPU): its factory goes through on_device
    cfg = compose_unlearn(*TINY, "unlearner=dmm", f"predictor={name}", "device=cpu")
    with open_dict(cfg):
        del cfg["hydra"]
    bare = OmegaConf.to_container(cfg.predictor.model_factory, resolve=True)
    built = {}

    def predictor(**kwargs):
        built.update(kwargs)
        return "predictor"

    monkeypatch.setattr(unlearn, cfg.predictor._target_.rsplit(".", 1)[1], predictor)
    assert _load_unlearning_module().shared_parts(cfg) == {"predictor": "predictor"}
    factory = built.pop("model_factory")
    assert isinstance(factory, OnDevice) and factory.device == torch.device("cpu")
    model, bare_model = factory(), instantiate(cfg.model)()
    assert [p.shape for p in model.parameters()] == [p.shape for p in bare_model.parameters()]
    assert built["data"] is not None and built["config"] is not None  # the rest as configured
    # the settings (what a record and the resume keys hold) still name the bare factory
    assert OmegaConf.to_container(cfg.predictor.model_factory, resolve=True) == bare


def _write_train_scores(workspace: Path) -> str:
    """A random training-point score matrix for the tiny experiment, as score.py records it."""
    cfg = compose_unlearn(*TINY)
    train = instantiate(cfg.data).train
    directory = workspace / "scores"
    directory.mkdir(parents=True)
    scores = np.random.default_rng(0).normal(size=(len(train), len(train))).astype(np.float32)
    np.save(directory / "random-train.npy", scores)
    record = {"train_fingerprint": train.fingerprint(), "query_fingerprint": train.fingerprint(),
              "architecture": unlearn.architecture(instantiate(cfg.model)())}  # fmt: skip
    (directory / "random-train.json").write_text(json.dumps(record))
    return "random-train"


def test_per_model_predictor_work_is_done_for_every_original_and_timed():
    """A predictor's ``prepare_model`` runs on each original before any request (its time goes
    into the predictor seconds, not the unlearning time); predictors without one are skipped."""
    prepared = []

    class Predictor:
        def prepare_model(self, model):
            prepared.append(model)

    module = _load_unlearning_module()
    assert module._prepare_for_models({"predictor": Predictor()}, ["a", "b"]) >= 0.0
    assert prepared == ["a", "b"]
    module._prepare_for_models({"predictor": object()}, ["a"])
    module._prepare_for_models({}, ["a"])
    assert prepared == ["a", "b"]


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_dmm_runs_with_each_predictor_and_reports_its_preparation_time(tmp_path, name):
    # TRAK is tuned and calibrated on two proxies: the calibration pools them
    options = {
        "trak": (*TINY_DMM[:1], "tuning.proxies=2"),
        "datamodels": TINY_DMM[1:],
        "scores": (f"scores_name={_write_train_scores(tmp_path)}",) if name == "scores" else (),
    }.get(name, ())
    forget = "class" if name == "head_absent" else "random_10pct"  # it refuses a random set
    overrides = ("unlearner=dmm", f"predictor={name}", f"forget={forget}", "klom_floor=false")
    record = _run_in_process(tmp_path, *overrides, *options, "tuning.grid=[0.001]")
    assert record["status"] == "ok" and record["predictor_seconds"] > 0.0
    expected = PREDICTORS[name]
    assert record["method"]["predictor"]["type"] == f"{expected.__module__}.{expected.__qualname__}"
    expected_output = "margin" if name in ("trak", "datamodels", "scores") else "logits"
    if name == "scores":
        assert record["method"]["predictor"]["scores"] == [240, 240]
    assert record["method"]["predictor"]["output"] == expected_output
    if name == "trak":  # calibrated on the proxies, and the scales reached the predictor
        calibration = record["calibration"]
        assert calibration["scale"] >= 0 and calibration["forget_scale"] >= 0
        assert calibration["proxies"] == 2 and len(record["tuning"]["per_proxy"]) == 2
        assert record["method"]["predictor"]["forget_scale"] == calibration["forget_scale"]
    assert all(math.isfinite(value) for value in _numbers(record["klom"]))


def test_a_diverging_unlearner_is_recorded_as_such(tmp_path):
    overrides = ("unlearner=ga", "unlearner.loop.optimizer.lr=1e30", "tuning.parameter=null")
    record = _run_in_process(tmp_path, *overrides, "klom_floor=false")
    assert record["status"] == "diverged" and "diverged with every candidate" in record["error"]
    assert "average_gap" not in record and record["settings"]["unlearner"]["loop"]["epochs"] == 5


def test_a_run_on_cached_models_times_no_one_time_start_up_of_the_process(tmp_path):
    # Originals and oracles on disk, no proxy search: the first thing timed is an unlearning run,
    # and torch's lazy import at the first optimiser (~1 s) must not land in it.
    _run_in_process(tmp_path, "unlearner=ft", "klom_floor=false", "tuning.grid=[0.001]")
    overrides = ("unlearner=retrain", "klom_floor=false", "results_name=again")
    statements = (
        "from pathlib import Path\nfrom tests.experiments.entry import run_entry_point\n"
        f"run_entry_point('unlearning', Path({str(tmp_path)!r}), *{overrides!r}, base={TINY!r})"
    )
    assert torch_imports_while_unlearning(statements) == []


FIXED = ("unlearner=ft", "klom_floor=false", "tuning.grid=[0.001]", "results_name=x1")


def _claim_of(workspace: Path) -> Path:
    return workspace / "results" / ".search" / "x1" / ".claim"


def test_a_run_failing_on_a_bad_tuning_key_leaves_results_name_to_the_corrected_one(tmp_path):
    with pytest.raises(TypeError, match="fractoin"):
        _run_in_process(tmp_path, *FIXED, "+tuning.also.fractoin=[0.1,0.5]")
    assert not _claim_of(tmp_path).exists()
    assert _run_in_process(tmp_path, *FIXED)["status"] == "ok"


def test_a_run_failing_before_its_journal_holds_anything_withdraws_its_claim(tmp_path):
    with pytest.raises(ValueError, match="unknown tuning criterion"):
        _run_in_process(tmp_path, *FIXED, "tuning.criterion=gapp")
    assert not (tmp_path / "results" / ".search" / "x1").exists()
    assert _run_in_process(tmp_path, *FIXED)["status"] == "ok"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_run_with_a_journal_or_an_interrupted_one_keeps_its_claim(
    tmp_path, monkeypatch, error
):
    """A run that failed after its search (journaled), or was interrupted (killed) at any point,
    keeps results_name for its resumption."""
    overrides = FIXED if error is RuntimeError else (*FIXED, "tuning.parameter=null")

    def failing(*args, **kwargs):
        raise error

    stable = unlearn.unlearn_each_stable
    monkeypatch.setattr(unlearn, "unlearn_each_stable", failing)
    with pytest.raises(error):
        _run_in_process(tmp_path, *overrides)
    assert _claim_of(tmp_path).is_file()
    journaled = list(_claim_of(tmp_path).parent.glob("*.json"))
    assert len(journaled) == (1 if error is RuntimeError else 0)  # the search's one value
    with pytest.raises(ValueError, match="another configuration is writing results_name="):
        _run_in_process(tmp_path, *FIXED, "tuning.grid=[0.01]")
    monkeypatch.setattr(unlearn, "unlearn_each_stable", stable)
    assert _run_in_process(tmp_path, *overrides)["status"] == "ok"


DIVERGING = ("unlearner=ga", "unlearner.loop.optimizer.lr=1e30", "tuning.parameter=null")
FINISHED = {"ok": FIXED, "diverged": (*DIVERGING, "klom_floor=false", "results_name=x1")}


def _no_training(monkeypatch) -> None:
    """Make loading or training the originals, the first costly step of a run, fail."""

    def training(*args, **kwargs):
        raise AssertionError("the finished run was computed again")

    monkeypatch.setattr(unlearn, "load_or_train", training)


def _record_of(workspace: Path, name: str = "x1") -> Path:
    return workspace / "results" / f"{name}.json"


@pytest.mark.parametrize("status", sorted(FINISHED))
def test_a_finished_run_started_again_is_skipped_and_returns_its_recorded_gap(
    tmp_path, monkeypatch, capsys, status
):
    # a killed multirun started again must not redo its finished jobs (ok or diverged: gap inf)
    overrides = FINISHED[status]
    record = _run_in_process(tmp_path, *overrides)
    assert record["status"] == status
    path = _record_of(tmp_path)
    written, stamp = path.read_bytes(), path.stat().st_mtime_ns
    _no_training(monkeypatch)
    capsys.readouterr()
    again = _run_in_process(tmp_path, *overrides)  # and checks the gap returned is the record's
    assert again == record and path.read_bytes() == written and path.stat().st_mtime_ns == stamp
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and str(path) in printed[0] and "rerun=true" in printed[0]
    assert f"({record['status']}, average gap" in printed[0]


def test_a_finished_run_differing_only_in_volatile_settings_is_skipped(tmp_path, monkeypatch):
    # threads and progress change no record; nor does rerun, which a record made before it
    # existed lacks: each still names the same run
    _run_in_process(tmp_path, *FIXED)
    path = _record_of(tmp_path)
    record = json.loads(path.read_text())
    del record["settings"]["rerun"]
    path.write_text(json.dumps(record))
    _no_training(monkeypatch)
    threads = torch.get_num_threads()
    try:
        assert _run_in_process(tmp_path, *FIXED, "threads=2", "progress=true") == record
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # skipped before the run set its threads


def _count_unlearning(monkeypatch) -> list:
    """Record each call of ``unlearn.unlearn_each_stable`` (the unlearning of the originals)."""
    calls, stable = [], unlearn.unlearn_each_stable

    def counted(*args, **kwargs):
        calls.append(1)
        return stable(*args, **kwargs)

    monkeypatch.setattr(unlearn, "unlearn_each_stable", counted)
    return calls


def test_rerun_recomputes_a_finished_run_and_replaces_its_record(tmp_path, monkeypatch):
    _run_in_process(tmp_path, *FIXED)
    calls = _count_unlearning(monkeypatch)
    record = _run_in_process(tmp_path, *FIXED, "rerun=true")
    assert calls == [1] and record["status"] == "ok" and record["settings"]["rerun"] is True
    assert not (tmp_path / "results" / ".search" / "x1").exists()  # its journal cleared as before


def test_a_finished_run_of_other_library_versions_is_recomputed(tmp_path, monkeypatch):
    _run_in_process(tmp_path, *FIXED)
    path = _record_of(tmp_path)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "versions": {**record["versions"], "torch": "0.0"}}))
    calls = _count_unlearning(monkeypatch)
    again = _run_in_process(tmp_path, *FIXED)
    assert calls == [1] and again["versions"] == record["versions"]


def test_a_finished_run_is_found_from_a_moved_workspace_or_an_explicit_device(
    tmp_path, monkeypatch
):
    # the record is found through its workspace, so paths under it are compared as ${workspace}/...;
    # device=cpu is the run that device=auto made on this CPU machine
    record = _run_in_process(tmp_path, *FIXED)
    path = _record_of(tmp_path)
    moved = json.loads(path.read_text().replace(str(tmp_path), "/old/place/of/it/"))
    assert moved["settings"]["workspace"] == "/old/place/of/it/"
    path.write_text(json.dumps(moved))
    _no_training(monkeypatch)
    assert _run_in_process(tmp_path, *FIXED, "device=cpu") == moved
    assert record["settings"]["device"] == "auto"


def test_portable_settings_name_paths_under_the_workspace_however_it_is_spelled():
    spelled = [
        ("runs/x", "runs/x/models"),
        ("./runs/x/", "./runs/x//models"),
        ("/a/x", "/a/x/models"),
    ]
    for workspace, models in spelled:
        settings = {"workspace": workspace, "root": models, "other": "runs/xy", "threads": 2}
        assert _load_unlearning_module().portable_settings(settings) == {
            "workspace": "${workspace}", "root": "${workspace}/models", "other": "runs/xy",
        }  # fmt: skip


@pytest.mark.parametrize("key", ["models", "tuning.models"])
@pytest.mark.parametrize("value", ["0", "-1", "1.5"])
def test_a_count_that_is_not_a_positive_integer_is_refused_before_anything_runs(
    tmp_path, key, value
):
    with pytest.raises(ValueError, match=f"{key} must be an integer >= 1, got"):
        _run_in_process(tmp_path, *FIXED, f"{key}={value}")
    assert not (tmp_path / "results").exists()


def test_a_finished_run_on_another_device_is_recomputed(tmp_path, monkeypatch, capsys):
    # device=auto is cpu here and cuda on a GPU machine: a record made on one is not the other's
    record = _run_in_process(tmp_path, *FIXED)
    assert record["resolved_device"] == "cpu"
    path = _record_of(tmp_path)
    path.write_text(json.dumps({**record, "resolved_device": "cuda"}))
    calls = _count_unlearning(monkeypatch)
    again = _run_in_process(tmp_path, *FIXED)
    assert calls == [1] and again["resolved_device"] == "cpu"
    assert "recorded on cuda, not cpu; recomputing it" in capsys.readouterr().out
    del again["resolved_device"]  # a record from before the field: taken as it is
    path.write_text(json.dumps(again))
    _no_training(monkeypatch)
    assert _run_in_process(tmp_path, *FIXED) == again


@pytest.mark.parametrize("rerun", ["false", "true"])
def test_a_record_of_other_settings_is_refused_before_any_model_is_trained(
    tmp_path, monkeypatch, rerun
):
    # never skipped (its gap is another run's) nor replaced, as before; rerun does not override it
    _run_in_process(tmp_path, *FIXED)
    written = _record_of(tmp_path).read_bytes()
    _no_training(monkeypatch)
    with pytest.raises(ValueError, match=r"records a run with other \['tuning'\]"):
        _run_in_process(tmp_path, *FIXED, "tuning.grid=[0.01]", f"rerun={rerun}")
    assert _record_of(tmp_path).read_bytes() == written
    assert not (tmp_path / "results" / ".search" / "x1").exists()  # and nothing claimed
