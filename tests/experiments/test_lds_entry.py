"""experiments/lds.py: scores are evaluated only against the ground truth of their own data."""

import json

import numpy as np
import pytest

from tda.datamodels import GroundTruthStore, sample_subsets
from tda.scores import save_scores
from tests.experiments.entry import run_entry_point

N_TRAIN, N_QUERY = 12, 3


def _workspace(root, legacy: bool = False) -> None:
    """A ground truth of 8 subsets x 2 seeds (outputs: a linear function of the masks) and a
    score record naming the same queries and the training set ``"train-a"``; ``legacy``: the
    store made before training sets were recorded."""
    masks = sample_subsets(N_TRAIN, 0.5, 8, seed=0)
    store = GroundTruthStore.create_or_open(
        root / "ground_truth", masks, [0, 1], "queries", train_fingerprint="train-a"
    )
    weights = np.random.default_rng(0).normal(size=(N_QUERY, N_TRAIN))
    store.run(lambda mask, seed: weights @ mask + 0.01 * seed, progress=False)
    if legacy:
        manifest = json.loads((root / "ground_truth" / "manifest.json").read_text())
        del manifest["train_fingerprint"]
        (root / "ground_truth" / "manifest.json").write_text(json.dumps(manifest))
    record = {"query_fingerprint": "queries", "train_fingerprint": "train-a"}
    save_scores(root / "scores" / "s.npy", weights, record)


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


@pytest.mark.parametrize("made", [{"members": [1, 4]}, {"checkpoints": ["seed-1.epoch-0002"]}])
def test_a_ground_truth_retrained_with_a_members_seed_is_refused(tmp_path, made):
    """A retrained model with a member's seed starts from its initial weights and agrees with it
    more than an independent one: that member's LDS was inflated."""
    _workspace(tmp_path)  # ground-truth seeds 0 and 1
    path = tmp_path / "scores" / "s.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **made}))
    with pytest.raises(ValueError, match=r"retrains with seeds \[1\], which the members"):
        run_entry_point("lds", tmp_path, "scores_name=s")
    assert not (tmp_path / "results" / "lds-s.json").exists()
    path.write_text(json.dumps({**json.loads(path.read_text()), "members": [2, 3]}))
    assert run_entry_point("lds", tmp_path, "scores_name=s") > 0.99
