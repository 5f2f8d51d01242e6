"""The valuation figure's panels: readable axes and intervals that stay within [0, 1]."""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tda.data import Examples
from tda.valuation import PruningCurve, valuation_report
from tda.valuation.figure import _distribution, _pruning, _recall


@pytest.fixture
def axis():
    figure = Figure()
    FigureCanvasAgg(figure)  # draws without pyplot's global state
    return figure.subplots()


@pytest.mark.parametrize(("scale", "exponent"), [(1e-3, -3), (1e4, 4), (1.0, None)])
def test_the_power_of_ten_of_the_values_is_in_the_label_not_an_offset_text(axis, scale, exponent):
    train = Examples(torch.zeros(200, 2), torch.zeros(200, dtype=torch.long))
    values = torch.linspace(-1.5, 0.7, 200, dtype=torch.float64) * scale
    _distribution(axis, valuation_report(train, values=values))
    axis.figure.canvas.draw()
    # matplotlib's "1e-3" offset text sat on top of the axis label
    assert axis.xaxis.get_offset_text().get_text() == ""
    label = axis.get_xlabel()
    if exponent is None:
        assert "10^" not in label
    else:
        assert rf"$\times 10^{{{exponent}}}$" in label
        shown = [tick.get_position()[0] for tick in axis.get_xticklabels()]
        assert max(abs(x) for x in shown) < 10


def test_the_pruning_band_stays_within_zero_one(axis):
    # two seeds: the Student-t upper bound was 1.0418 and the band was drawn above 1
    accuracy = np.array([[0.92, 0.9377777777777778], [0.5, 0.51]])
    curve = PruningCurve((0.0, 0.1), (0, 1), {"value": accuracy, "random": accuracy})
    _pruning(axis, _report_with(curve))
    bands = [collection.get_paths()[0].vertices for collection in axis.collections]
    assert len(bands) == 2
    assert all(band[:, 1].max() <= 1.0 for band in bands)
    assert max(band[:, 1].max() for band in bands) == 1.0


def _report_with(pruning):
    train = Examples(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    return valuation_report(train, values=torch.arange(4.0), pruning=pruning)


def test_the_panels_name_the_values_and_the_suspicion_score_as_the_report_does(axis):
    train = Examples(torch.zeros(40, 2), torch.arange(40) % 2)
    flipped = torch.arange(40) < 4
    report = valuation_report(
        train,
        self_influence=torch.linspace(0, 1, 40),
        flipped=flipped,
        suspicion_name="mean checkpoint loss",
    )
    _distribution(axis, report)
    assert axis.get_xlabel().startswith("mean checkpoint loss")
    axis.clear()
    _recall(axis, report)
    assert axis.get_legend().get_texts()[0].get_text().startswith("mean checkpoint loss (AUC")
