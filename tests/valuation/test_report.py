"""The one-call valuation report: rankings, detection, JSON and figure."""

import json

import numpy as np
import pytest
import torch

from tda.data import Examples
from tda.ranking import top_examples
from tda.valuation import PruningCurve, valuation_report


@pytest.fixture
def train():
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
