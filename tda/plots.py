"""Figures for people: the training examples that most help and hurt a prediction."""

from __future__ import annotations

import os

from tda.atomic import save_figure
from tda.data.examples import Examples
from tda.ranking import TopExamples


def _draw(axis, example, title: str, color: str) -> None:
    values = example.reshape(-1).numpy()
    axis.plot(values, color=color, linewidth=1.2)
    axis.set_title(title, fontsize=7)
    axis.set_xticks([])
    axis.set_yticks([])


def plot_top_examples(
    queries: Examples,
    train: Examples,
    top: TopExamples,
    rows: list[int],
    path: str | os.PathLike,
) -> None:
    """Save a grid: each row a query, then its most helpful (green) and harmful (red) examples.

    Inputs are drawn as 1-D signals (flattened), which suits MNIST-1D and tabular data. The file
    is published atomically (:func:`tda.atomic.save_figure`): a failed save leaves no partial one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = top.helpful.shape[1]
    figure, axes = plt.subplots(len(rows), 1 + 2 * k, figsize=(1.6 * (1 + 2 * k), 1.4 * len(rows)))
    axes = axes.reshape(len(rows), -1)
    for row, query in enumerate(rows):
        label = int(queries.targets[query])
        _draw(axes[row, 0], queries.inputs[query], f"query {query}\nlabel {label}", "black")
        for column in range(k):
            for offset, kind, color in ((1, "helpful", "tab:green"), (1 + k, "harmful", "tab:red")):
                index = int(getattr(top, kind)[query, column])
                score = float(getattr(top, f"{kind}_scores")[query, column])
                title = f"train {index} (y={int(train.targets[index])})\n{score:+.3g}"
                _draw(axes[row, offset + column], train.inputs[index], title, color)
    figure.suptitle("Most helpful (green) and most harmful (red) training examples", fontsize=9)
    figure.tight_layout()
    try:
        save_figure(figure, path, dpi=120)
    finally:
        plt.close(figure)
