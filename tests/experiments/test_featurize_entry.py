"""experiments/featurize.py on the `tiny` experiment in this process: which members it featurizes,
and the one storage dtype a store keeps."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tda.store import StoreMismatchError
from tests.experiments.entry import run_entry_point

FINAL = "seed-0.epoch-0002"  # a tiny member's final checkpoint in the store


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("featurize")
    run_entry_point("train", root)
    return root


@pytest.fixture
def workspace(trained, tmp_path) -> Path:
    """A workspace of its own, with the trained members linked in."""
    (tmp_path / "models").symlink_to(trained / "models")
    return tmp_path


@pytest.mark.parametrize(
    ("override", "differs"),
    [
        ("data.n_train=400", "data"),
        ("model.hidden=[32]", "model"),
        ("train.batch_size=16", "settings"),
    ],
)
def test_members_trained_otherwise_are_refused_by_what_differs(workspace, override, differs):
    """Members of 240 examples were featurized as those of 400 (the store was keyed by the 400)."""
    with pytest.raises(ValueError, match=f"member 0 trained with other {differs}.*experiment="):
        run_entry_point("featurize", workspace, override)
    assert not (workspace / "features").exists()


def test_members_of_another_experiment_name_their_settings_not_an_unfinished_training(workspace):
    """Without experiment=tiny: "members [0, 1] have not finished training: run train.py
    first", although they had finished, in 2 epochs where the default experiment asks 30."""
    with pytest.raises(
        ValueError, match=r"other .*settings.*'settings\.epochs': recorded 2, asked 30"
    ):
        run_entry_point("featurize", workspace, "seeds=[0,1]", base=["progress=false"])


def test_featurizing_before_training_names_train_py(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"seed-0 does not exist.*run experiments/train\.py \(with the same experiment=/",
    ):
        run_entry_point("featurize", tmp_path)


def test_more_queries_than_test_examples_are_refused_by_name(workspace):
    """It said "index 60 is out of range for 60 examples"."""
    with pytest.raises(ValueError, match=r"queries=100 is out of range: the test split has 60"):
        run_entry_point("featurize", workspace, "queries=100")


def test_another_storage_dtype_on_an_existing_store_is_refused(workspace):
    """It wrote 0 shards and left the store float32, as if bfloat16 had been stored."""
    assert run_entry_point("featurize", workspace) == 8
    with pytest.raises(
        StoreMismatchError,
        match=r"keeps its features as float32 .*storage_dtype=bfloat16 would write bfloat16; "
        r"featurize with storage_dtype=float32",
    ):
        run_entry_point("featurize", workspace, "storage_dtype=bfloat16")
    assert run_entry_point("featurize", workspace, "storage_dtype=float32") == 0  # the same


def _kill_shard(workspace: Path, index: int = 1) -> None:
    """Remove shard ``index`` of the first member's training features, as a killed run left it."""
    for path in (workspace / "features" / "shards" / FINAL / "train").glob(f"{index:06d}.*"):
        path.unlink()


def test_a_killed_run_resumed_with_another_storage_dtype_leaves_one_dtype(workspace):
    """The rerun wrote the missing shard as float32 among bfloat16 ones, and score.py refused
    the mixed store ("shards of 'features' ... differ") without naming storage_dtype."""
    run_entry_point("featurize", workspace, "storage_dtype=bfloat16")
    _kill_shard(workspace)
    with pytest.raises(StoreMismatchError, match="as bfloat16 .*storage_dtype=null would write"):
        run_entry_point("featurize", workspace)
    assert run_entry_point("featurize", workspace, "storage_dtype=bfloat16") == 1
    shards = (workspace / "features" / "shards").rglob("*.features.npy")
    assert {np.load(path).dtype for path in shards} == {np.dtype(np.uint16)}  # bfloat16 words
    run_entry_point("score", workspace, "attributor=trak")


def test_a_store_from_before_dtypes_were_recorded_keeps_its_shards_dtype(workspace):
    run_entry_point("featurize", workspace)
    record = workspace / "features" / "dtypes" / "features.json"
    assert json.loads(record.read_text()) == {"array": "features", "dtype": "<f4"}
    shutil.rmtree(record.parent)  # as stores were written before
    _kill_shard(workspace)
    with pytest.raises(StoreMismatchError, match="keeps its features as float32"):
        run_entry_point("featurize", workspace, "storage_dtype=float16")
    assert run_entry_point("featurize", workspace) == 1
    assert json.loads(record.read_text())["dtype"] == "<f4"
