"""experiments/valuation.py ranks by the chosen self-influence and reports what the library does."""

import json
import logging
from functools import partial

import pytest
import torch

from tda.checkpoints import list_checkpoints, load_checkpoint
from tda.curvature import EKFACSolver
from tda.data import load_mnist1d
from tda.features import GradientFeaturizer, featurize, open_feature_store
from tda.methods import TRAK, InfluenceFunction
from tda.models import MLP, CNN1d, build_model
from tda.projection import DenseProjector
from tda.valuation import (
    ValuationReport,
    checkpoint_loss,
    flip_labels,
    loss_gradient_norms,
    mislabel_detection,
    self_scores,
    tracin_self_influence,
)
from tests.experiments.entry import run_entry_point

BASE = ("experiment=tiny", "progress=false", "++train.checkpoints=2")
FACTORY = partial(MLP, hidden=(16,))  # the tiny experiment's model


@pytest.fixture(scope="module")
def noisy():
    splits = load_mnist1d(240, 60)
    return flip_labels(splits.train, 0.1, splits.num_classes, seed=0)


def run_directory(workspace, fraction="0.1"):
    """The one run directory of model seed 0 and flip seed 0 (keyed by its settings)."""
    (run,) = (workspace / "valuation").glob(f"seed-0-flip-0-fraction-{fraction}-*")
    return run


def report_directory(workspace, choice):
    """The one report directory of ``choice`` (ranking-values_from) in the run."""
    (report,) = run_directory(workspace).glob(f"{choice}-*")
    return report


def saved(workspace):
    return list_checkpoints(run_directory(workspace) / "models")


@pytest.mark.parametrize(
    ("ranking", "library"),
    [("tracin", tracin_self_influence), ("checkpoint_loss", checkpoint_loss)],
)
def test_a_checkpoint_ranking_is_the_library_function_over_the_saved_checkpoints(
    tmp_path, noisy, ranking, library
):
    auc = run_entry_point("valuation", tmp_path, f"valuation.ranking={ranking}", base=BASE)
    data, flipped = noisy
    suspicion = library(FACTORY, saved(tmp_path), data)
    assert len(saved(tmp_path)) == 2
    assert auc == mislabel_detection(suspicion, flipped).auc
    assert (report_directory(tmp_path, f"{ranking}-trak") / "valuation.json").is_file()


def test_graddot_ranking_reads_the_final_model(tmp_path, noisy):
    auc = run_entry_point("valuation", tmp_path, "valuation.ranking=graddot", base=BASE)
    data, flipped = noisy
    model = final_model(tmp_path)
    assert auc == mislabel_detection(loss_gradient_norms(model, data), flipped).auc


def test_an_unknown_ranking_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"valuation.ranking='aum' must be one of .*'tracin'"):
        run_entry_point("valuation", tmp_path, "valuation.ranking=aum", base=BASE)


def final_model(workspace):
    return load_checkpoint(saved(workspace)[-1], build_model(FACTORY, 0))


def test_influence_ranking_is_the_library_ekfac_self_influence(tmp_path, noisy):
    auc = run_entry_point("valuation", tmp_path, base=BASE)  # the default ranking
    data, flipped = noisy
    influence = InfluenceFunction(EKFACSolver()).fit(final_model(tmp_path), data)
    assert auc == mislabel_detection(influence.self_influence(), flipped).auc


def test_trak_ranking_is_the_library_trak_self_influence(tmp_path, noisy):
    overrides = ("valuation.ranking=trak", "valuation.pruning_fractions=[0.5]")
    auc = run_entry_point(
        "valuation", tmp_path, *overrides, "valuation.pruning_seeds=[0]", base=BASE
    )
    data, flipped = noisy
    featurizer = GradientFeaturizer(DenseProjector(dim=16))  # the tiny experiment's projection
    store = open_feature_store(tmp_path / "store", featurizer)
    model = final_model(tmp_path)
    featurize(model, {"train": data}, featurizer, store, checkpoint_id="final", progress=False)
    trak = TRAK().fit(store)
    suspicion = self_scores(lambda rows: trak.score("train", indices=rows), len(data), 512)
    assert auc == pytest.approx(mislabel_detection(suspicion, flipped).auc, abs=1e-12)
    report = json.loads((report_directory(tmp_path, "trak-trak") / "valuation.json").read_text())
    assert report["pruning"]["fractions"] == [0.0, 0.5]  # with the full-data baseline


def test_values_from_checkpoint_loss_prune_the_highest_losses_first_without_queries(
    tmp_path, noisy
):
    pruning = ("valuation.pruning_fractions=[0.5]", "valuation.pruning_seeds=[0]")
    overrides = ("valuation.ranking=graddot", "valuation.values_from=checkpoint_loss", *pruning)
    run_entry_point("valuation", tmp_path, *overrides, base=BASE)
    data, _ = noisy
    report = ValuationReport.load(report_directory(tmp_path, "graddot-checkpoint_loss"))
    expected = -checkpoint_loss(FACTORY, saved(tmp_path), data)
    torch.testing.assert_close(report.values, expected, rtol=0, atol=0)
    assert report.top is None  # no query scores
    assert report.value_name == "minus the mean checkpoint loss"
    assert report.suspicion_name == "grad-dot self-score"
    run = run_directory(tmp_path)
    assert not list(run.glob("features-*"))  # TRAK was never fitted
    assert len(list(run.glob("pruning-checkpoint_loss-*"))) == 1


def test_influence_on_a_cnn_differentiates_every_layer(tmp_path, noisy):
    # EK-FAC covers the convolutions (tda.layer_positions): no parameters need naming.
    cnn = (*BASE, "model=cnn1d", "~model.hidden", "+model.channels=4")
    auc = run_entry_point("valuation", tmp_path, base=cnn)
    data, flipped = noisy
    factory = partial(CNN1d, channels=4)
    model = load_checkpoint(saved(tmp_path)[-1], build_model(factory, 0))
    influence = InfluenceFunction(EKFACSolver()).fit(model, data)
    assert auc == mislabel_detection(influence.self_influence(), flipped).auc


def test_an_influence_error_names_the_option_that_fixes_it(tmp_path):
    overrides = ("valuation.values_from=influence", "valuation.influence_parameters=[head.weight]")
    with pytest.raises(
        ValueError, match=r"'head.weight'.*valuation.influence_parameters=\[\.\.\.\]"
    ):
        run_entry_point("valuation", tmp_path, *overrides, base=BASE)


def test_other_rankings_keep_their_own_reports_and_share_the_models_features(tmp_path):
    run_entry_point("valuation", tmp_path, "valuation.ranking=graddot", base=BASE)
    run = run_directory(tmp_path)
    (store,) = run.glob("features-*")  # keyed by the trained model's fingerprint
    written = {path: path.stat().st_mtime_ns for path in store.rglob("*.npy")}
    run_entry_point("valuation", tmp_path, "valuation.ranking=tracin", base=BASE)
    assert list(run.glob("features-*")) == [store]  # reused, never deleted under another job
    assert {path: path.stat().st_mtime_ns for path in store.rglob("*.npy")} == written
    for choice in ("graddot-trak", "tracin-trak"):
        assert (report_directory(tmp_path, choice) / "valuation.json").is_file()


def test_another_projection_or_query_count_gets_its_own_features_pruning_runs_and_report(
    tmp_path,
):
    # The same trained model (CPU: bitwise), other TRAK settings: no store, pruning run or report
    # of the first settings may be reused, refused or replaced, and the report of the second
    # settings is the one a fresh workspace gets, in a directory of the same name.
    pruning = ("valuation.pruning_fractions=[0.5]", "valuation.pruning_seeds=[0]")
    first = ("valuation.ranking=graddot", *pruning)
    run_entry_point("valuation", tmp_path / "shared", *first, base=BASE)
    other = (*first, "projection_dim=32", "queries=20")
    run_entry_point("valuation", tmp_path / "shared", *other, base=BASE)
    run_entry_point("valuation", tmp_path / "fresh", *other, base=BASE)
    run = run_directory(tmp_path / "shared")
    assert len(list(run.glob("features-*"))) == len(list(run.glob("pruning-trak-*"))) == 2
    assert len(list(run.glob("graddot-trak-*/valuation.json"))) == 2
    fresh = report_directory(tmp_path / "fresh", "graddot-trak")
    reports = [
        json.loads((report / "valuation.json").read_text()) for report in (run / fresh.name, fresh)
    ]
    assert reports[0] == reports[1]


def test_runs_with_other_flip_fractions_keep_their_own_models_and_reports(tmp_path):
    for fraction in ("0.1", "0.3"):
        overrides = ("valuation.ranking=graddot", f"valuation.flip_fraction={fraction}")
        run_entry_point("valuation", tmp_path, *overrides, base=BASE)
    reports = sorted((tmp_path / "valuation").rglob("valuation.json"))
    flipped = [json.loads(report.read_text())["mislabel"]["n_flipped"] for report in reports]
    assert flipped == [24, 72]  # 10% and 30% of the 240 training labels
    assert len(list((tmp_path / "valuation").glob("*/models"))) == 2


def test_a_query_count_cut_to_half_the_test_split_is_logged_and_recorded(tmp_path, caplog):
    # the tiny experiment asks for 40 of its 60 test examples; the other half measures accuracy
    with caplog.at_level(logging.WARNING):
        run_entry_point("valuation", tmp_path, "valuation.ranking=graddot", base=BASE)
    assert "the first 30 test examples as queries, not queries=40" in caplog.text
    settings = report_directory(tmp_path, "graddot-trak") / "settings.json"
    assert json.loads(settings.read_text())["queries"] == 30
