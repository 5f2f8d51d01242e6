"""experiments/score.py with the model-based attributors, on the `tiny` experiment in this process.

The members are trained with two checkpoints plus their starting parameters. For influence
functions (CG, EK-FAC), TracIn and Source the entry point must write exactly what the library
returns when called directly, in the place and format lds.py reads.
"""

import json
import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tda.checkpoints import list_checkpoints
from tda.curvature import ConjugateGradientSolver, EKFACSolver
from tda.data import load_mnist1d
from tda.device import resolve_device
from tda.ensemble import load_member
from tda.methods import EKFACEigenbasis, InfluenceFunction, Source, TracIn
from tda.models import MLP
from tda.scores import save_scores
from tda.store import StoreMismatchError
from tests.experiments.entry import run_entry_point
from unlearn import architecture, load_scores_predictor

FACTORY = partial(MLP, hidden=(16,))  # the tiny experiment's model, built without Hydra


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score")
    run_entry_point("train", root)
    return root


@pytest.fixture(scope="module")
def data():
    """The tiny experiment's training set and its 40 queries."""
    splits = load_mnist1d(240, 60)
    return splits.train, splits.test.subset(range(40))


def member_checkpoints(workspace: Path, seed: int):
    return list_checkpoints(workspace / "models" / f"seed-{seed}")


def written(workspace: Path, name: str) -> tuple[np.ndarray, dict]:
    path = workspace / "scores" / f"{name}.npy"
    return np.load(path), json.loads(path.with_suffix(".json").read_text())


def ensemble(scores_of, seeds) -> np.ndarray:
    """Mean over members, accumulated as the library does."""
    total = None
    for seed in seeds:
        scores = scores_of(seed)
        total = scores if total is None else total.add_(scores)
    return (total / len(seeds)).numpy()


def test_members_carry_their_start(workspace):
    saved = member_checkpoints(workspace, 0)
    assert [(c.epoch, c.step, c.segment_steps) for c in saved] == [(0, 0, 0), (1, 8, 8), (2, 16, 8)]


@pytest.mark.parametrize(
    ("attributor", "solver"),
    [("if_cg", ConjugateGradientSolver()), ("if_ekfac", EKFACSolver())],
)
def test_influence_scores_equal_the_library_on_the_final_models(
    workspace, data, attributor, solver
):
    train, queries = data
    path = run_entry_point("score", workspace, f"attributor={attributor}")
    assert path == str(workspace / "scores" / f"{attributor}.npy")

    def direct(seed):
        model = load_member(FACTORY, member_checkpoints(workspace, seed)[-1])
        return InfluenceFunction(solver).fit(model, train).score(queries)

    scores, made = written(workspace, attributor)
    assert scores.shape == (40, 240) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores, ensemble(direct, [0, 1]))
    assert made["attributor"]["solver"]["_target_"].endswith(type(solver).__name__)
    assert made["query_fingerprint"] == queries.fingerprint()
    assert made["train_fingerprint"] == train.fingerprint()
    assert made["seconds"] > 0 and made["threads"] == 1


def test_training_points_as_queries_make_a_dmm_score_predictor(workspace, data):
    """``query_split=train`` scores every training point against every other; the DMM predictor
    built from those files sums the forget set's columns, and refuses test-query scores."""
    train, queries = data
    run_entry_point(
        "score", workspace, "attributor=if_ekfac", "query_split=train", "scores_name=ekfac-train"
    )

    def direct(seed):
        model = load_member(FACTORY, member_checkpoints(workspace, seed)[-1])
        return InfluenceFunction(EKFACSolver()).fit(model, train).score(train)

    scores, made = written(workspace, "ekfac-train")
    assert scores.shape == (240, 240) and made["query_split"] == "train"
    np.testing.assert_array_equal(scores, ensemble(direct, [0, 1]))
    assert made["architecture"] == architecture(FACTORY())
    predictor = load_scores_predictor(workspace / "scores" / "ekfac-train.npy", train)
    forget = np.array([3, 50, 101])
    expected = torch.from_numpy(scores[:, forget].sum(1))
    torch.testing.assert_close(predictor.effect(forget), expected)
    assert predictor.scope.architecture == made["architecture"] and predictor.output == "margin"
    run_entry_point("score", workspace, "attributor=if_ekfac", "scores_name=ekfac-test")
    with pytest.raises(ValueError, match="does not score the training points as queries"):
        load_scores_predictor(workspace / "scores" / "ekfac-test.npy", train)
    with pytest.raises(ValueError, match="another training set"):
        load_scores_predictor(workspace / "scores" / "ekfac-train.npy", queries)
    with pytest.raises(FileNotFoundError, match="run experiments/score.py first"):
        load_scores_predictor(workspace / "scores" / "absent.npy", train)


def test_tracin_scores_equal_the_library_over_every_checkpoint(workspace, data):
    train, queries = data
    run_entry_point("score", workspace, "attributor=tracin")

    def direct(seed):
        return TracIn().fit(FACTORY, member_checkpoints(workspace, seed), train).score(queries)

    scores, made = written(workspace, "tracin")
    np.testing.assert_array_equal(scores, ensemble(direct, [0, 1]))
    assert made["checkpoints"] == [
        f"seed-{seed}.epoch-000{epoch}" for seed in (0, 1) for epoch in (0, 1, 2)
    ]
    assert made["members"] == [0, 1]  # two models, six checkpoints
    assert "featurizer" not in made


def test_source_scores_equal_the_library_with_start_gradients(workspace, data):
    train, queries = data
    overrides = ("attributor=source", "+attributor.segments=2", "+attributor.gradients=start")
    run_entry_point("score", workspace, *overrides, "models=1", "scores_name=source-m1")

    def direct(seed):
        source = Source(segments=2, eigenbasis=EKFACEigenbasis(), gradients="start")
        return source.fit(FACTORY, member_checkpoints(workspace, seed), train).score(queries)

    scores, made = written(workspace, "source-m1")
    np.testing.assert_array_equal(scores, ensemble(direct, [0]))
    assert len(made["checkpoints"]) == 3 and made["shape"] == [40, 240]


def test_lds_reads_model_based_scores(workspace):
    run_entry_point("score", workspace, "attributor=tracin")
    run_entry_point("retrain", workspace)
    mean = run_entry_point("lds", workspace, "attributor=tracin")
    record = json.loads((workspace / "results" / "lds-tracin.json").read_text())
    assert record["lds"]["mean"] == mean and -1.0 <= mean <= 1.0
    assert record["scores_made_with"] == written(workspace, "tracin")[1]


def test_train_and_score_records_name_the_device_they_ran_on(workspace):
    """They recorded ``device: auto`` (train.py's no device at all), never the device used."""
    device = str(resolve_device("auto"))
    run_entry_point("score", workspace, "attributor=tracin", "models=1", "scores_name=device")
    assert written(workspace, "device")[1]["resolved_device"] == device
    for seed in (0, 1):
        record = json.loads((workspace / "results" / f"train-seed-{seed}.json").read_text())
        assert record["resolved_device"] == device


def test_scores_of_other_queries_are_not_replaced_under_their_name(workspace):
    """``query_split=train`` under the default name replaced the test-query scores lds.py reads;
    scores of the same queries (here of one member instead of two) may still be replaced."""
    path = Path(run_entry_point("score", workspace, "attributor=tracin", "scores_name=kept"))
    before = path.read_bytes()
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"{path} holds scores of 40 test queries, not of the 240 training points as queries "
            "asked for, and would be replaced: pass another scores_name (e.g. "
            f"scores_name=kept-train), or delete {path} and {path.with_suffix('.json')}"
        ),
    ):
        run_entry_point(
            "score", workspace, "attributor=tracin", "query_split=train", "scores_name=kept"
        )
    with pytest.raises(ValueError, match="holds scores of 40 test queries, not of the 20 test"):
        run_entry_point("score", workspace, "attributor=tracin", "queries=20", "scores_name=kept")
    assert path.read_bytes() == before
    run_entry_point("score", workspace, "attributor=if_ekfac", "models=1", "scores_name=kept")
    assert written(workspace, "kept")[1]["members"] == [0]


def test_scores_of_the_same_count_of_other_queries_are_not_replaced(workspace, tmp_path, data):
    """Told apart by their fingerprint: e.g. the first 40 test examples of another test split."""
    (tmp_path / "models").symlink_to(workspace / "models")
    record = {"query_fingerprint": "other", "query_split": "test", "shape": [40, 240]}
    path = save_scores(tmp_path / "scores" / "tracin.npy", np.zeros((40, 240), np.float32), record)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"scores of 40 test queries \(other examples\), not of"):
        run_entry_point("score", tmp_path, "attributor=tracin")
    assert path.read_bytes() == before
    record["query_fingerprint"] = data[1].fingerprint()  # these queries: replaced
    save_scores(path, np.zeros((40, 240), np.float32), record)
    run_entry_point("score", tmp_path, "attributor=tracin")
    assert written(tmp_path, "tracin")[1]["members"] == [0, 1]


def test_members_trained_for_other_epochs_are_refused_by_their_settings(workspace):
    """It said "members [0, 1] have not finished training" of members finished in 2 epochs."""
    with pytest.raises(
        ValueError, match=r"other settings \('settings\.epochs': recorded 2, asked 3"
    ):
        run_entry_point("score", workspace, "attributor=tracin", "train.epochs=3")


@pytest.mark.parametrize(
    ("override", "differs"), [("data.n_train=400", "data"), ("model.hidden=[32]", "model")]
)
def test_members_trained_otherwise_are_refused_by_what_differs(workspace, override, differs):
    """Members trained on 240 examples were scored as [40, 400] scores of the 400-example set."""
    with pytest.raises(ValueError, match=f"member 0 trained with other {differs} .*experiment="):
        run_entry_point("score", workspace, "attributor=if_ekfac", override, "scores_name=other")
    assert not (workspace / "scores" / "other.npy").exists()


def test_members_of_another_experiment_name_their_settings_not_an_unfinished_training(workspace):
    with pytest.raises(
        ValueError, match=r"other .*settings.*'settings\.epochs': recorded 2, asked 30"
    ):
        run_entry_point("score", workspace, "attributor=if_ekfac", "seeds=[0,1]", base=[])


def _copied_members(workspace: Path, target: Path) -> Path:
    shutil.copytree(workspace / "models", target / "models")
    return target


def test_an_interrupted_member_is_refused_as_unfinished(workspace, tmp_path):
    final = member_checkpoints(_copied_members(workspace, tmp_path), 1)[-1]
    final.path.unlink()
    final.path.with_suffix(".json").unlink()
    with pytest.raises(
        ValueError,
        match=r"member 1 .* not finished training \(its last checkpoint is of epoch 1 of 2\); "
        r"run experiments/train\.py",
    ):
        run_entry_point("score", tmp_path, "attributor=tracin")


def test_a_member_without_a_recipe_names_its_epochs_and_the_experiment(workspace, tmp_path):
    for recipe in (_copied_members(workspace, tmp_path) / "models").glob("*.recipe.json"):
        recipe.unlink()  # trained before recipes were recorded
    with pytest.raises(
        ValueError,
        match=r"its last checkpoint is of epoch 2, but the settings ask 3 epochs \(train\.epochs\)"
        r"; pass the experiment=",
    ):
        run_entry_point("score", tmp_path, "attributor=tracin", "train.epochs=3")


def test_scoring_before_training_names_train_py(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run experiments/train\.py \(with the same"):
        run_entry_point("score", tmp_path, "attributor=if_ekfac")


def test_more_queries_than_test_examples_are_refused_by_name(workspace):
    """It said "index 60 is out of range for 60 examples"."""
    with pytest.raises(ValueError, match=r"queries=100 is out of range: the test split has 60"):
        run_entry_point("score", workspace, "attributor=if_ekfac", "queries=100")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_feature_stores_score_like_float32(workspace, tmp_path, dtype):
    """``storage_dtype`` halves the store; TRAK still accumulates in float64."""
    for name, storage in (("half", dtype), ("full", "null")):
        target = tmp_path / name
        target.mkdir()
        (target / "models").symlink_to(workspace / "models")
        run_entry_point("featurize", target, f"storage_dtype={storage}")
        run_entry_point("score", target, "attributor=trak")
    shards = list((tmp_path / "half" / "features").rglob("*.features.npy"))
    saved = np.float16 if dtype == "float16" else np.uint16  # bfloat16: raw 16-bit words
    assert shards and all(np.load(path).dtype == saved for path in shards)
    half, full = (written(tmp_path / name, "trak")[0] for name in ("half", "full"))
    assert np.corrcoef(half.ravel(), full.ravel())[0, 1] > 0.999


def test_an_unknown_storage_dtype_is_refused_by_name(workspace, tmp_path):
    (tmp_path / "models").symlink_to(workspace / "models")
    with pytest.raises(ValueError, match="storage_dtype='int8'.*bfloat16"):
        run_entry_point("featurize", tmp_path, "storage_dtype=int8")


def test_store_scores_of_other_queries_than_the_store_holds_are_refused(workspace, tmp_path):
    """The record names the queries by fingerprint: scores of a store featurized with 40
    queries must not be recorded as the first 20's (they were [40, n_train], named as 20)."""
    (tmp_path / "models").symlink_to(workspace / "models")
    run_entry_point("featurize", tmp_path)
    with pytest.raises(ValueError, match=r"split 'query' with 40 examples.*but 20 examples"):
        run_entry_point("score", tmp_path, "attributor=trak", "queries=20")
    assert not (tmp_path / "scores" / "trak.npy").exists()
    run_entry_point("score", tmp_path, "attributor=trak")  # the store's own queries: scored
    assert written(tmp_path, "trak")[0].shape == (40, 240)


def test_features_of_members_since_retrained_are_refused(workspace, tmp_path):
    """score.py read the store by checkpoint id only: members retrained with another learning
    rate were scored with the old members' features under the new members' names."""
    (tmp_path / "models").symlink_to(workspace / "models")
    run_entry_point("featurize", tmp_path)
    retrained = tmp_path / "retrained"
    run_entry_point("train", retrained, "train.optimizer.lr=0.01")
    (tmp_path / "models").unlink()
    (tmp_path / "models").symlink_to(retrained / "models")
    with pytest.raises(StoreMismatchError, match="checkpoint 'seed-0.*featurize again"):
        run_entry_point("score", tmp_path, "attributor=trak", "train.optimizer.lr=0.01")
    assert not (tmp_path / "scores" / "trak.npy").exists()


@pytest.mark.parametrize(
    "value, message",
    [("1.5", "models must be an integer >= 1, got 1.5"), ("0", "models must be an integer >= 1"),
     ("3", "models=3 must be between 1 and the 2 seeds")],
)  # fmt: skip
def test_a_models_count_that_is_no_count_of_the_members_is_refused_before_reading_them(
    tmp_path, value, message
):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_entry_point("score", tmp_path, f"models={value}")
    assert not list(tmp_path.iterdir())
