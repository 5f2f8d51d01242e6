"""experiments/lds.py: scores are evaluated only against the ground truth of their own data."""

import functools
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tda.datamodels import GroundTruthStore
from tda.scores import save_scores
from tests.experiments.entry import REPO, TINY, run_entry_point


@functools.cache
def _tiny() -> tuple[dict, np.ndarray, list[int], int]:
    """The tiny experiment's fingerprints (train, queries), ground-truth masks and seeds, and
    number of queries, as retrain.py and score.py make them."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("lds", TINY)
    splits = instantiate(cfg.data)
    fingerprints = {
        "query_fingerprint": splits.test.subset(range(cfg.queries)).fingerprint(),
        "train_fingerprint": splits.train.fingerprint(),
    }
    masks = instantiate(cfg.ground_truth.masks)(n_train=len(splits.train))
    return fingerprints, masks, list(cfg.ground_truth.seeds), cfg.queries


def _workspace(root, legacy: bool = False) -> None:
    """The tiny experiment's ground truth (outputs: a linear function of the masks) and a score
    record naming its queries and training set; ``legacy``: the store made before training sets
    were recorded."""
    fingerprints, masks, seeds, n_query = _tiny()
    store = GroundTruthStore.create_or_open(
        root / "ground_truth",
        masks,
        seeds,
        fingerprints["query_fingerprint"],
        train_fingerprint=fingerprints["train_fingerprint"],
    )
    weights = np.random.default_rng(0).normal(size=(n_query, masks.shape[1]))
    store.run(lambda mask, seed: weights @ mask + 0.01 * seed, progress=False)
    if legacy:
        manifest = json.loads((root / "ground_truth" / "manifest.json").read_text())
        del manifest["train_fingerprint"]
        (root / "ground_truth" / "manifest.json").write_text(json.dumps(manifest))
    save_scores(root / "scores" / "s.npy", weights, fingerprints)


@pytest.mark.parametrize("legacy", [False, True])
def test_scores_of_the_ground_truth_s_training_set_are_evaluated(tmp_path, legacy):
    _workspace(tmp_path, legacy)
    assert run_entry_point("lds", tmp_path, "scores_name=s") > 0.99


def test_scores_of_another_training_set_of_the_same_size_are_refused(tmp_path):
    """Same size, same queries: only the training set's fingerprint tells them apart."""
    _workspace(tmp_path)
    path = tmp_path / "scores" / "s.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "train_fingerprint": "train-b"}))
    with pytest.raises(ValueError, match="another training set than the ground truth"):
        run_entry_point("lds", tmp_path, "scores_name=s")
    assert not (tmp_path / "results" / "lds-s.json").exists()


def test_scores_of_other_queries_are_refused_naming_them_and_the_fix(tmp_path):
    _workspace(tmp_path)
    path = tmp_path / "scores" / "s.json"
    other = {"query_fingerprint": "q-b", "query_split": "train", "shape": [240, 240]}
    path.write_text(json.dumps({**json.loads(path.read_text()), **other}))
    with pytest.raises(ValueError, match=r"other queries \(240, query_split=train\).*queries="):
        run_entry_point("lds", tmp_path, "scores_name=s")
    assert not (tmp_path / "results" / "lds-s.json").exists()


@pytest.mark.parametrize(
    "made", [{"members": [1001, 4]}, {"checkpoints": ["seed-1001.epoch-0002"]}]
)
def test_a_ground_truth_retrained_with_a_members_seed_is_refused(tmp_path, made):
    """A retrained model with a member's seed starts from its initial weights and agrees with it
    more than an independent one: that member's LDS was inflated."""
    _workspace(tmp_path)  # ground-truth seeds 1000 and 1001
    path = tmp_path / "scores" / "s.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **made}))
    with pytest.raises(ValueError, match=r"retrains with seeds \[1001\], which the members"):
        run_entry_point("lds", tmp_path, "scores_name=s")
    assert not (tmp_path / "results" / "lds-s.json").exists()
    path.write_text(json.dumps({**json.loads(path.read_text()), "members": [2, 3]}))
    assert run_entry_point("lds", tmp_path, "scores_name=s") > 0.99


def test_a_workspace_of_another_experiment_is_refused_and_its_record_kept(tmp_path):
    """Without experiment=tiny the default experiment's settings (4000 examples, 100 subsets,
    3 seeds, 200 queries) would be recorded as those of the tiny ground truth evaluated."""
    _workspace(tmp_path)
    run_entry_point("lds", tmp_path, "scores_name=s")
    record = tmp_path / "results" / "lds-s.json"
    before = record.read_bytes()
    with pytest.raises(ValueError, match=r"experiment=mnist1d_mlp.*Pass the experiment="):
        run_entry_point("lds", tmp_path, "scores_name=s", base=["progress=false"])
    assert record.read_bytes() == before


@pytest.mark.parametrize(
    "override, named",
    [
        ("ground_truth.seeds=[1000,1002]", "ground_truth.seeds"),
        ("ground_truth.masks.count=3", "ground_truth.masks"),
        ("ground_truth.masks.seed=1", "ground_truth.masks"),
        ("queries=39", "queries"),
        ("data.n_train=200", "data"),
    ],
)
def test_a_configuration_that_is_not_the_ground_truth_s_is_refused(tmp_path, override, named):
    _workspace(tmp_path)
    with pytest.raises(ValueError, match=f"does not describe the ground truth.*{named}"):
        run_entry_point("lds", tmp_path, "scores_name=s", override)
    assert not (tmp_path / "results" / "lds-s.json").exists()


def test_the_record_states_the_ground_truth_the_store_holds(tmp_path):
    _workspace(tmp_path)
    run_entry_point("lds", tmp_path, "scores_name=s")
    facts = json.loads((tmp_path / "results" / "lds-s.json").read_text())["ground_truth"]
    fingerprints, masks, seeds, n_query = _tiny()
    assert (facts["subsets"], facts["n_train"]) == masks.shape
    assert (facts["seeds"], facts["queries"]) == (seeds, n_query)
    assert facts["train_fingerprint"] == fingerprints["train_fingerprint"]
    assert facts["query_fingerprint"] == fingerprints["query_fingerprint"]


@pytest.mark.parametrize("missing", ["s.npy", "s.json"])
def test_missing_scores_name_the_score_py_command(tmp_path, missing):
    _workspace(tmp_path)
    (tmp_path / "scores" / missing).unlink()
    command = "python experiments/score.py experiment=tiny attributor=trak scores_name=s"
    with pytest.raises(FileNotFoundError, match=f"{missing} is missing; run `{command}`"):
        run_entry_point("lds", tmp_path, "scores_name=s")
