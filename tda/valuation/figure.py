"""The valuation figure: value distribution, mislabel recall curve and pruning curve."""

from __future__ import annotations

import os

import numpy as np
import torch

from tda.atomic import save_figure


def plot_valuation(report, path: str | os.PathLike) -> str:
    """Save one row of panels for what ``report`` (a ``ValuationReport``) holds and return the
    file's sha256; the file is published atomically (:func:`tda.atomic.save_figure`), so a failed
    save leaves the previous figure, never a partial one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        panel
        for panel, present in (
            (_distribution, report.values is not None or report.self_influence is not None),
            (_recall, report.mislabel is not None),
            (_pruning, report.pruning is not None),
        )
        if present
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        panel(axis, report)
    figure.tight_layout()
    try:
        return save_figure(figure, path, dpi=120)
    finally:
        plt.close(figure)


def _distribution(axis, report) -> None:
    use_values = report.values is not None
    scores = torch.as_tensor(report.values if use_values else report.self_influence)
    scores = scores.double().numpy()
    name = report.value_name if use_values else report.suspicion_name
    # Values are heavy-tailed: bin the central 98% so the bulk stays readable.
    low, high = np.quantile(scores, [0.01, 0.99])
    # The power of ten goes into the label: matplotlib's offset text ("1e-3") overlaps it.
    exponent = _exponent(max(abs(low), abs(high)))
    scores, low, high = (number / 10.0**exponent for number in (scores, low, high))
    bins = np.linspace(low, high, 51) if high > low else 50
    if report.flipped is None:
        axis.hist(scores, bins=bins, color="tab:blue")
    else:
        flipped = torch.as_tensor(report.flipped).numpy().astype(bool)
        axis.hist(scores[~flipped], bins=bins, alpha=0.6, label="clean", color="tab:blue")
        axis.hist(scores[flipped], bins=bins, alpha=0.6, label="flipped", color="tab:red")
        axis.legend(fontsize=7)
    scale = rf" ($\times 10^{{{exponent}}}$)" if exponent else ""
    axis.set_xlabel(f"{name}{scale}, 1st-99th percentile", fontsize=8)
    axis.ticklabel_format(axis="x", style="plain", useOffset=False)
    axis.set_ylabel("training examples", fontsize=8)
    axis.set_title("Distribution", fontsize=9)


def _exponent(largest: float) -> int:
    """Power of ten to divide by so that tick labels of magnitude ``largest`` stay short (0 for
    magnitudes in [0.01, 1000))."""
    if largest == 0:
        return 0
    exponent = int(np.floor(np.log10(largest)))
    return exponent if not -2 <= exponent < 3 else 0


def _recall(axis, report) -> None:
    curve = report.mislabel.recall_curve
    inspected = np.arange(1, len(curve) + 1) / len(curve)
    ranked_by = report.suspicion_name if report.self_influence is not None else "lowest value"
    label = f"{ranked_by} (AUC {report.mislabel.auc:.2f})"
    axis.plot(inspected, curve, color="tab:red", label=label)
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", label="random")
    axis.set_xlabel("fraction of training data inspected", fontsize=8)
    axis.set_ylabel("fraction of wrong labels found", fontsize=8)
    axis.set_title("Mislabel detection", fontsize=9)
    axis.legend(fontsize=7)


def _pruning(axis, report) -> None:
    curve = report.pruning
    fractions = np.asarray(curve.fractions)
    for strategy, color in (("value", "tab:green"), ("random", "tab:gray")):
        low, high = curve.interval(strategy)
        axis.plot(fractions, curve.mean(strategy), marker="o", color=color, label=strategy)
        axis.fill_between(fractions, low, high, color=color, alpha=0.2)
    axis.set_xlabel("fraction of training data removed", fontsize=8)
    axis.set_ylabel("test accuracy", fontsize=8)
    level = f"{100 * curve.confidence:g}%"
    seeds = f"{len(curve.seeds)} seed" + ("s" if len(curve.seeds) > 1 else "")
    axis.set_title(f"Pruning ({seeds}, {level} CI)", fontsize=9)
    axis.legend(fontsize=7)
