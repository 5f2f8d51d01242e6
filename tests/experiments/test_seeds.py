"""The seed lists of every entry point that reads them: checked before anything is trained or
written (``seeds=abc`` was read one character at a time, ``seeds=[]`` divided by zero after
training nothing, ``seeds=[-1]`` trained a member into ``models/seed--1/``), and retraining seeds
that are the members' refused by retrain.py before the ground truth is trained."""

import re

import pytest

from tests.experiments.entry import run_entry_point

REFUSED = "seeds must be a non-empty list of distinct integers >= 0, got "
FACTS = [  # the facts experiments at test size: nothing runs long if a check is missing
    "facts.people=8", "forget_people=2", "train.epochs=1", "grid=[1e-3]", "model.dim=8",
    "model.heads=2", "model.layers=1",
]  # fmt: skip
CHOSEN = [
    f"chosen.{name}=1e-3" for name in ("ga", "graddiff", "npo", "wagle_graddiff", "wagle_npo")
]


@pytest.mark.parametrize("value", ["abc", "3", "[]", "[0.5]", "[-1]", "[0,0]", "[true]", "null"])
def test_train_refuses_anything_but_distinct_non_negative_integers(tmp_path, value):
    with pytest.raises(ValueError, match=re.escape(REFUSED)):
        run_entry_point("train", tmp_path, f"seeds={value}")
    assert not list(tmp_path.iterdir())  # no member (nor seed--1/) was trained


@pytest.mark.parametrize("script", ["featurize", "score", "retrain"])
@pytest.mark.parametrize("value", ["abc", "[-1]"])
def test_every_tiny_entry_point_refuses_them_before_reading_the_members(tmp_path, script, value):
    """Without members in the workspace: a late check would say "run train.py" instead."""
    with pytest.raises(ValueError, match=re.escape(REFUSED)):
        run_entry_point(script, tmp_path, f"seeds={value}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("script", "chosen"), [("facts_unlearning", []), ("facts_klom", CHOSEN)])
def test_the_facts_experiments_refuse_them_before_training(tmp_path, script, chosen):
    overrides = [*FACTS, *chosen, "seeds=abc", f"output={tmp_path / 'out.json'}"]
    with pytest.raises(ValueError, match=re.escape(f"{REFUSED}'abc'")):
        run_entry_point(script, tmp_path, *overrides, base=["progress=false"])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["[]", "[-1,1000]", "[1000,1000]"])
def test_retrain_refuses_bad_retraining_seeds_by_their_name(tmp_path, value):
    with pytest.raises(ValueError, match=re.escape(f"ground_truth.{REFUSED}")):
        run_entry_point("retrain", tmp_path, f"ground_truth.seeds={value}")
    assert not list(tmp_path.iterdir())


def test_retrain_refuses_the_members_seeds_before_training_the_ground_truth(tmp_path):
    """It trained the whole ground truth, which lds.py then refused with these words."""
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"the ground truth in {tmp_path / 'ground_truth'} retrains with seeds [1], which the "
            "members listed in seeds=[0, 1] were trained with: retrain it with seeds apart from "
            "the members' (ground_truth.seeds, e.g. [1000, 1001, 1002])"
        ),
    ):
        run_entry_point("retrain", tmp_path, "ground_truth.seeds=[1,1000]")
    assert not list(tmp_path.iterdir())
    assert run_entry_point("retrain", tmp_path, "subsets=0", "seeds=[0,2]") == 2  # apart: trained
