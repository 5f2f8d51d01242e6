"""experiments/retrain.py on the `tiny` experiment: the store is keyed by what makes the weights."""

import json

import numpy as np
import pytest

from tda.datamodels import GroundTruthStore
from tda.fingerprint import config_fingerprint
from tests.experiments.entry import run_entry_point


def test_the_checkpoints_saved_do_not_count_but_the_training_settings_do(tmp_path):
    """TINY trains with ``++train.checkpoints=2 ++train.save_initial=true``; retraining the same
    subsets without them (or with others) reuses the recorded outputs."""
    assert run_entry_point("retrain", tmp_path, "subsets=0") == 2  # subset 0 x 2 seeds
    outputs = [np.load(path) for path in sorted((tmp_path / "ground_truth").rglob("*.npy"))]
    plain = ["experiment=tiny", "progress=false"]
    assert run_entry_point("retrain", tmp_path, "subsets=0", base=plain) == 0
    assert run_entry_point("retrain", tmp_path, "subsets=0", "++train.checkpoints=1") == 0
    again = [np.load(path) for path in sorted((tmp_path / "ground_truth").rglob("*.npy"))]
    assert all(np.array_equal(a, b) for a, b in zip(outputs, again, strict=True))
    store = GroundTruthStore.open(tmp_path / "ground_truth")
    assert "checkpoints" not in store.config["train"]
    assert store.n_query == 40  # the tiny experiment's queries: other lengths are refused
    with pytest.raises(ValueError, match="config"):  # a setting that trains otherwise
        run_entry_point("retrain", tmp_path, "subsets=0", "train.epochs=3")


def test_a_store_whose_recipe_still_holds_the_checkpoints_saved_is_reused(tmp_path):
    """Stores made before the checkpoint settings were left out record them in their recipe
    (e.g. ``++train.checkpoints=2``): one run with the same settings must reuse its outputs, not
    be refused for a recipe that differs only in them, nor take another store's."""
    assert run_entry_point("retrain", tmp_path, "subsets=0") == 2
    path = tmp_path / "ground_truth" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["config"]["train"] |= {"checkpoints": 2, "save_initial": True}  # as written then
    manifest["config_fingerprint"] = config_fingerprint(manifest["config"])
    del manifest["train_fingerprint"]
    path.write_text(json.dumps(manifest, indent=2))
    assert run_entry_point("retrain", tmp_path, "subsets=0") == 0
    assert run_entry_point("retrain", tmp_path, "subsets=0", "++train.checkpoints=1") == 0
    assert json.loads(path.read_text()) == manifest  # opened as it was, not rewritten
    with pytest.raises(ValueError, match="config"):  # a setting that trains otherwise
        run_entry_point("retrain", tmp_path, "subsets=0", "train.epochs=3")


def test_too_many_queries_are_refused_naming_the_setting(tmp_path):
    with pytest.raises(ValueError, match=r"queries=100 is out of range: the test split has 60"):
        run_entry_point("retrain", tmp_path, "subsets=0", "queries=100")
