"""The one-call valuation report: rankings, detection, JSON and figure."""

import contextlib
import dataclasses
import json
import os

import matplotlib.figure
import numpy as np
import pytest
import torch

from tda.atomic import file_digest
from tda.data import Examples
from tda.plots import plot_top_examples
from tda.ranking import TopExamples, top_examples
from tda.valuation import MislabelReport, PruningCurve, ValuationReport, valuation_report
from tda.valuation import report as report_module
from tda.valuation.figure import plot_valuation

REPORT_FILES = ["valuation.json", "valuation.png", "values.npz"]


def _interrupted_savefig(self, fname, **options):
    """``Figure.savefig`` killed midway: the start of an image written to ``fname``, then an
    error."""
    named = isinstance(fname, (str, os.PathLike))
    with open(fname, "wb") if named else contextlib.nullcontext(fname) as sink:
        sink.write(b"\x89PNG\r\n\x1a\n partial")
    raise RuntimeError("killed while saving the figure")


def _killed_savez(*args, **arrays):
    raise RuntimeError("killed while writing the arrays")


def _recorded_digests_match(directory) -> bool:
    recorded = json.loads((directory / "valuation.json").read_text())["sha256"]
    return recorded == {name: file_digest(directory / name) for name in REPORT_FILES[1:]}


@pytest.fixture
def train():
    return _train()


def _train():
    return Examples(torch.zeros(6, 2), torch.tensor([0, 1, 0, 1, 0, 1]))


def test_report_from_scores(train):
    scores = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0, -1.0], [1.0, 0.0, 0.5, 1.0, 0.0, -3.0]])
    flipped = torch.tensor([False, True, False, False, False, True])
    report = valuation_report(train, scores=scores, flipped=flipped, k=2)
    torch.testing.assert_close(report.values, scores.double().mean(0))
    assert report.most_valuable.tolist() == [3, 0]
    assert report.least_valuable.tolist() == [5, 1]
    assert report.most_suspicious.tolist() == [5, 1]  # minus the value without self-influence
    assert torch.equal(report.top.helpful, top_examples(scores, 2).helpful)
    assert report.mislabel.auc == 1.0
    listing = report.as_dict()["least_valuable"]
    assert listing[0] == {"index": 5, "score": -2.0, "label": 1}
    printed = str(report).splitlines()  # a summary, not the tensors
    assert printed[:3] == [
        "valuation of 6 training examples",
        "  most valuable: #3, #0",
        "  least valuable: #5, #1",
    ]
    assert printed[-1].startswith("  wrong labels found [") and "AUC 1.000" in printed[-1]


def test_self_influence_ranks_suspicion(train):
    self_influence = torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8, 0.0])
    report = valuation_report(train, self_influence=self_influence, k=3)
    assert report.most_suspicious.tolist() == [1, 4, 3]
    assert report.values is None and report.most_valuable is None


def test_rankings_break_ties_to_the_lower_index_as_the_mislabel_recall_curve_does():
    train = Examples(torch.zeros(40, 2), torch.zeros(40, dtype=torch.long))
    self_influence = torch.zeros(40, dtype=torch.float64)
    self_influence[[35, 9, 30, 5]] = 2.0
    flipped = torch.zeros(40, dtype=torch.bool)
    flipped[[30, 35]] = True
    report = valuation_report(train, self_influence=self_influence, flipped=flipped, k=4)
    assert report.most_suspicious.tolist() == [5, 9, 30, 35]
    # the recall curve beside it inspects the examples in that order
    np.testing.assert_array_equal(report.mislabel.recall_curve[:4], [0.0, 0.0, 0.5, 1.0])
    values = torch.zeros(40, dtype=torch.float64)
    values[[7, 2]] = 1.0
    report = valuation_report(train, values=values, k=3)
    assert report.most_valuable.tolist() == [2, 7, 0]
    assert report.least_valuable.tolist() == [0, 1, 3]


def test_save_writes_json_and_figure(train, tmp_path):
    accuracy = np.array([[0.9, 0.92], [0.91, 0.9]])
    pruning = PruningCurve((0.0, 0.2), (0, 1), {"value": accuracy, "random": accuracy - 0.05})
    report = valuation_report(
        train,
        values=torch.arange(6.0),
        self_influence=torch.arange(6.0).flip(0),
        flipped=torch.tensor([True, False, False, False, False, False]),
        pruning=pruning,
    )
    summary, figure, arrays = report.save(tmp_path)
    record = json.loads(summary.read_text())
    assert record["mislabel"]["auc"] == 1.0 and record["pruning"]["fractions"] == [0.0, 0.2]
    assert figure.stat().st_size > 10_000
    saved = np.load(arrays, allow_pickle=False)  # every example's numbers, not only the top k
    np.testing.assert_array_equal(saved["values"], np.arange(6.0))
    np.testing.assert_array_equal(saved["self_influence"], np.arange(6.0)[::-1])
    assert saved["flipped"].tolist() == [True] + [False] * 5 and len(saved["labels"]) == 6


def test_nothing_to_value_is_refused(train):
    with pytest.raises(ValueError, match="give scores"):
        valuation_report(train)
    with pytest.raises(ValueError, match=r"values must be \[6\]"):
        valuation_report(train, values=torch.zeros(4))


def test_constant_values_still_plot(train, tmp_path):
    _, figure, _ = valuation_report(train, values=torch.zeros(6)).save(tmp_path)
    assert figure.exists()


def test_the_summary_records_the_digests_of_the_figure_and_arrays(train, tmp_path):
    summary, figure, arrays = valuation_report(train, values=torch.arange(6.0)).save(tmp_path)
    recorded = json.loads(summary.read_text())["sha256"]
    assert recorded == {figure.name: file_digest(figure), arrays.name: file_digest(arrays)}
    assert _recorded_digests_match(tmp_path)


@pytest.mark.parametrize(
    ("patched", "replacement"),
    [
        ((matplotlib.figure.Figure, "savefig"), _interrupted_savefig),
        ((np, "savez"), _killed_savez),
    ],
    ids=["figure", "arrays"],
)
def test_a_killed_save_leaves_the_previous_report_whole(
    train, tmp_path, monkeypatch, patched, replacement
):
    valuation_report(train, values=torch.arange(6.0)).save(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in REPORT_FILES}
    monkeypatch.setattr(*patched, replacement)
    with pytest.raises(RuntimeError, match="killed"):
        valuation_report(train, values=-torch.arange(6.0)).save(tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in REPORT_FILES} == before
    assert sorted(os.listdir(tmp_path)) == REPORT_FILES  # no temporary file left behind
    assert _recorded_digests_match(tmp_path)


def test_a_report_mixed_by_a_kill_between_publications_is_detected(train, tmp_path):
    valuation_report(train, values=torch.arange(6.0)).save(tmp_path)
    newer = tmp_path / "newer"
    valuation_report(train, values=-torch.arange(6.0)).save(newer)
    os.replace(newer / "values.npz", tmp_path / "values.npz")  # published, then killed
    assert not _recorded_digests_match(tmp_path)


def _draw_valuation(train, path):
    plot_valuation(valuation_report(train, values=torch.arange(6.0)), path)


def _draw_top_examples(train, path):
    top = top_examples(torch.arange(12.0).reshape(2, 6), k=1)
    plot_top_examples(train.subset(range(2)), train, top, rows=[0, 1], path=path)


@pytest.mark.parametrize("draw", [_draw_valuation, _draw_top_examples])
def test_an_interrupted_figure_save_leaves_no_partial_file(train, tmp_path, monkeypatch, draw):
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _interrupted_savefig)
    with pytest.raises(RuntimeError, match="killed while saving the figure"):
        draw(train, tmp_path / "figure.png")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["values", "self_influence"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_value_or_self_influence_is_refused_and_named(train, name, bad):
    array = torch.tensor([0.5, bad, -0.2, 0.1, -0.9, 0.3], dtype=torch.float64)
    # NaN was ranked first in every list (topk puts it on top) and written as invalid JSON
    with pytest.raises(ValueError, match=rf"{name} hold NaN or infinite values \(first at index 1"):
        valuation_report(train, **{name: array})


def test_a_non_finite_score_is_refused_with_its_position(train):
    scores = torch.zeros(2, 6)
    scores[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"scores hold NaN .* \(first at index \[1, 4\]"):
        valuation_report(train, scores=scores)


def test_scores_and_values_together_are_refused(train):
    # the given values were silently replaced by the scores' mean
    with pytest.raises(ValueError, match="give scores or values, not both"):
        valuation_report(train, scores=torch.ones(2, 6), values=torch.arange(6.0))


def test_save_refuses_a_nan_before_writing_anything(train, tmp_path):
    report = ValuationReport(
        labels=train.targets,
        values=torch.tensor([0.5, float("nan"), 0.0, 0.0, 0.0, 0.0]),
        most_valuable=torch.tensor([1, 0]),
    )
    with pytest.raises(ValueError, match="strict JSON"):
        report.save(tmp_path / "report")
    assert not (tmp_path / "report").exists()


def _strict_json(text: str) -> dict:
    def refuse(constant):
        raise AssertionError(f"{constant} is not strict JSON")

    return json.loads(text, parse_constant=refuse)


def _full_report(train) -> ValuationReport:
    scores = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0, -1.0], [1.0, 0.0, 0.5, 1.0, 0.0, -3.0]])
    accuracy = np.array([[0.9, 0.92], [0.91, 0.9]])
    return valuation_report(
        train,
        scores=scores,
        self_influence=torch.tensor([0.1, 0.9, 0.2, 0.3, 0.8, 0.0]),
        flipped=torch.tensor([False, True, False, False, True, False]),
        pruning=PruningCurve((0.0, 0.2), (0, 1), {"value": accuracy, "random": accuracy - 0.05}),
        k=2,
    )


def _assert_same_report(loaded: ValuationReport, saved: ValuationReport) -> None:
    for field in dataclasses.fields(ValuationReport):
        got, expected = getattr(loaded, field.name), getattr(saved, field.name)
        if isinstance(expected, torch.Tensor):
            assert got.dtype == expected.dtype and torch.equal(got, expected), field.name
        elif isinstance(expected, TopExamples):
            for part in dataclasses.fields(TopExamples):
                assert torch.equal(getattr(got, part.name), getattr(expected, part.name))
        elif isinstance(expected, MislabelReport):
            assert (got.found_at, got.auc, got.n_flipped, got.n_train) == (
                expected.found_at,
                expected.auc,
                expected.n_flipped,
                expected.n_train,
            )
            np.testing.assert_array_equal(got.recall_curve, expected.recall_curve)
        elif isinstance(expected, PruningCurve):
            assert (got.fractions, got.seeds, got.confidence) == (
                expected.fractions,
                expected.seeds,
                expected.confidence,
            )
            assert got.accuracy.keys() == expected.accuracy.keys()
            for strategy, table in expected.accuracy.items():
                np.testing.assert_array_equal(got.accuracy[strategy], table)
        elif isinstance(expected, str):
            assert got == expected, field.name
        else:
            assert got is None and expected is None, field.name


def test_a_saved_report_loads_back_equal_with_its_per_query_top_examples(train, tmp_path):
    report = _full_report(train)
    summary, _, arrays = report.save(tmp_path)
    _strict_json(summary.read_text())
    with np.load(arrays, allow_pickle=False) as saved:  # the per-query lists were not saved
        np.testing.assert_array_equal(saved["top_harmful"], report.top.harmful.numpy())
    loaded = ValuationReport.load(tmp_path)
    _assert_same_report(loaded, report)
    assert loaded.as_dict() == report.as_dict() and str(loaded) == str(report)


def test_a_report_without_scores_loads_back_equal(train, tmp_path):
    report = valuation_report(train, self_influence=torch.arange(6, dtype=torch.float32), k=3)
    report.save(tmp_path)
    _assert_same_report(ValuationReport.load(tmp_path), report)


def test_a_report_keeps_the_names_of_its_values_and_suspicion_score(train, tmp_path):
    names = {"value_name": "minus the mean checkpoint loss", "suspicion_name": "checkpoint loss"}
    report = valuation_report(train, values=-torch.arange(6.0), self_influence=torch.arange(6.0))
    assert (report.value_name, report.suspicion_name) == (
        "value (mean score over queries)",
        "self-influence",
    )  # the defaults
    named = valuation_report(
        train, values=-torch.arange(6.0), self_influence=torch.arange(6.0), **names
    )
    named.save(tmp_path)
    record = json.loads((tmp_path / "valuation.json").read_text())
    assert record["names"] == {"value": names["value_name"], "suspicion": names["suspicion_name"]}
    loaded = ValuationReport.load(tmp_path)
    assert (loaded.value_name, loaded.suspicion_name) == tuple(names.values())
    # a report saved before the names were recorded loads with the defaults
    del record["names"], record["summary_sha256"]
    record["summary_sha256"] = report_module._content_digest(record)
    (tmp_path / "valuation.json").write_text(json.dumps(record))
    older = ValuationReport.load(tmp_path)
    assert (older.value_name, older.suspicion_name) == (report.value_name, report.suspicion_name)


def _edit_summary(directory):
    record = json.loads((directory / "valuation.json").read_text())
    record["mislabel"]["auc"] = 0.99
    (directory / "valuation.json").write_text(json.dumps(record))


def _drop_summary_digest(directory):
    record = json.loads((directory / "valuation.json").read_text())
    del record["summary_sha256"]
    (directory / "valuation.json").write_text(json.dumps(record))


def _edit_figure(directory):
    with open(directory / "valuation.png", "ab") as file:
        file.write(b"\0")


def _arrays_of_a_later_killed_save(directory):
    newer = directory / "newer"
    valuation_report(_train(), values=-torch.arange(6.0)).save(newer)
    os.replace(newer / "values.npz", directory / "values.npz")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_edit_summary, r"valuation.json does not match the sha256 of its content"),
        (_drop_summary_digest, r"valuation.json does not match the sha256 of its content"),
        (_edit_figure, r"valuation.png does not match the sha256 that valuation.json records"),
        (_arrays_of_a_later_killed_save, r"values.npz does not match the sha256"),
    ],
    ids=["summary", "summary-digest", "figure", "arrays"],
)
def test_load_refuses_an_edited_or_mixed_report(train, tmp_path, edit, message):
    _full_report(train).save(tmp_path)
    edit(tmp_path)
    with pytest.raises(ValueError, match=message):
        ValuationReport.load(tmp_path)
