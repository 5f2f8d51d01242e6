"""experiments/valuation.py ranks by the chosen self-influence and reports what the library does."""

from functools import partial

import pytest

from tda.checkpoints import list_checkpoints, load_checkpoint
from tda.data import load_mnist1d
from tda.models import MLP, build_model
from tda.valuation import (
    flip_labels,
    loss_gradient_norms,
    mislabel_detection,
    tracin_self_influence,
)
from tests.experiments.entry import run_entry_point

BASE = ("experiment=tiny", "progress=false", "++train.checkpoints=2")
FACTORY = partial(MLP, hidden=(16,))  # the tiny experiment's model


@pytest.fixture(scope="module")
def noisy():
    splits = load_mnist1d(240, 60)
    return flip_labels(splits.train, 0.1, splits.num_classes, seed=0)


def saved(workspace):
    return list_checkpoints(workspace / "valuation" / "models" / "seed-0-flip-0")


def test_tracin_ranking_is_the_library_tracin_self_influence(tmp_path, noisy):
    auc = run_entry_point("valuation", tmp_path, "valuation.ranking=tracin", base=BASE)
    data, flipped = noisy
    suspicion = tracin_self_influence(FACTORY, saved(tmp_path), data)
    assert len(saved(tmp_path)) == 2
    assert auc == mislabel_detection(suspicion, flipped).auc
    assert (tmp_path / "valuation" / "valuation.json").is_file()


def test_graddot_ranking_reads_the_final_model(tmp_path, noisy):
    auc = run_entry_point("valuation", tmp_path, "valuation.ranking=graddot", base=BASE)
    data, flipped = noisy
    model = load_checkpoint(saved(tmp_path)[-1], build_model(FACTORY, 0))
    assert auc == mislabel_detection(loss_gradient_norms(model, data), flipped).auc


def test_an_unknown_ranking_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"valuation.ranking='aum'.*graddot.*influence.*tracin"):
        run_entry_point("valuation", tmp_path, "valuation.ranking=aum", base=BASE)
