"""One-call data-valuation summary: which training examples matter, and which look wrong.

``valuation_report(train, scores=...)`` turns any attributor's scores ``[n_query, n_train]``
(and/or self-influence, known wrong labels, a pruning curve) into a :class:`ValuationReport`;
``report.save(directory)`` writes ``valuation.json``, the figure ``valuation.png`` and the
per-example arrays ``values.npz``; the JSON, written last, records the other two files' sha256.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tda.atomic import write_atomic, write_json
from tda.data.examples import Examples
from tda.ranking import TopExamples, top_examples
from tda.valuation.mislabel import MislabelReport, mislabel_detection
from tda.valuation.pruning import PruningCurve
from tda.valuation.values import values_from_scores


@dataclass(frozen=True)
class ValuationReport:
    """Per-example values and what they reveal (fields are ``None`` where no input allowed them).

    Attributes:
        values: ``[n]`` mean score over the queries (high: helps the queries' outputs).
        self_influence: ``[n]`` self-influence (high: memorised, possibly mislabelled).
        labels: ``[n]`` training labels.
        most_valuable / least_valuable: ``k`` training indices, most extreme first.
        most_suspicious: ``k`` indices of highest self-influence (or lowest value).
        top: per query, the most helpful and harmful training examples (``tda.ranking``).
        flipped: ``[n]`` mask of labels known to be wrong.
        mislabel: detection of those wrong labels by the suspicion ranking.
        pruning: accuracy after removing the lowest-value examples versus at random.
    """

    labels: Tensor
    values: Tensor | None = None
    self_influence: Tensor | None = None
    most_valuable: Tensor | None = None
    least_valuable: Tensor | None = None
    most_suspicious: Tensor | None = None
    top: TopExamples | None = None
    flipped: Tensor | None = None
    mislabel: MislabelReport | None = None
    pruning: PruningCurve | None = None

    def __str__(self) -> str:
        """A few lines: the extreme examples, and detection and pruning where measured."""
        lines = [f"valuation of {len(self.labels)} training examples"]
        for name in ("most_valuable", "least_valuable", "most_suspicious"):
            indices = getattr(self, name)
            if indices is not None:
                shown = ", ".join(f"#{int(i)}" for i in indices[:5])
                lines.append(f"  {name.replace('_', ' ')}: {shown}")
        if self.mislabel is not None:
            lines.append(f"  {self.mislabel}")
        if self.pruning is not None:
            lines += [f"  {line}" for line in str(self.pruning).splitlines()]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """JSON-able summary: rankings with scores and labels, detection, pruning."""
        summary: dict = {"n_train": len(self.labels)}
        for name in ("most_valuable", "least_valuable"):
            if getattr(self, name) is not None:
                summary[name] = self._listing(getattr(self, name), self.values)
        if self.most_suspicious is not None:
            suspicion = self.self_influence if self.self_influence is not None else self.values
            summary["most_suspicious"] = self._listing(self.most_suspicious, suspicion)
        if self.mislabel is not None:
            summary["mislabel"] = self.mislabel.as_dict()
        if self.pruning is not None:
            summary["pruning"] = self.pruning.as_dict()
        return summary

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``valuation.json`` (summary), ``valuation.png`` (figure) and ``values.npz``
        (every example's labels, values, self-influence and known-wrong mask, those given) into
        ``directory``; returns the three paths.

        Each file is published atomically, the summary last: it records the sha256 of the other
        two (``"sha256"``: file name to digest), so it describes only a finished save. Both are
        made in memory before either is published, so a failing save leaves the previous
        report; a save killed between two publications leaves files that the digests disown.
        """
        from tda.valuation.figure import plot_valuation

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        summary, figure, arrays = (
            directory / name for name in ("valuation.json", "valuation.png", "values.npz")
        )
        content = self._arrays()
        digests = {figure.name: plot_valuation(self, figure)}
        digests[arrays.name] = write_atomic(arrays, lambda sink: sink.write(content))
        write_json(summary, {**self.as_dict(), "sha256": digests})
        return [summary, figure, arrays]

    def _arrays(self) -> bytes:
        """The per-example arrays as ``.npz`` bytes (loadable with ``np.load``, no pickle)."""
        named = {"labels": self.labels, "values": self.values}
        named |= {"self_influence": self.self_influence, "flipped": self.flipped}
        buffer = io.BytesIO()
        present = {k: torch.as_tensor(v).cpu().numpy() for k, v in named.items() if v is not None}
        np.savez(buffer, **present)
        return buffer.getvalue()

    def _listing(self, indices: Tensor, scores: Tensor) -> list[dict]:
        return [
            {"index": int(i), "score": float(scores[i]), "label": int(self.labels[i])}
            for i in indices
        ]


def valuation_report(
    train: Examples,
    *,
    scores: Tensor | np.ndarray | None = None,
    values: Tensor | None = None,
    self_influence: Tensor | None = None,
    flipped: Tensor | None = None,
    pruning: PruningCurve | None = None,
    k: int = 10,
) -> ValuationReport:
    """Summarise per-example values and self-influence of a training set in one call.

    Args:
        train: the training examples scored.
        scores: attribution scores ``[n_query, n_train]`` of any attributor; gives ``values``
            (their mean over queries) and each query's top helpful and harmful examples.
        values: ``[n_train]`` values, if not derived from ``scores``.
        self_influence: ``[n_train]``, e.g. ``InfluenceFunction.self_influence()`` or
            :func:`~tda.valuation.self_scores`; ranks suspicion (else minus the values do).
        flipped: ``[n_train]`` mask of labels known to be wrong (e.g. planted by
            :func:`~tda.valuation.flip_labels`): adds a mislabel-detection report.
        pruning: a :func:`~tda.valuation.pruning_curve` computed from these values.
        k: examples listed per ranking.

    Raises:
        ValueError: neither scores, values nor self-influence given, or lengths that differ.
    """
    if scores is not None:
        values = values_from_scores(scores)
    if values is None and self_influence is None:
        raise ValueError("give scores, values or self_influence to value the training set")
    n = len(train)
    for name, array in (("values", values), ("self_influence", self_influence)):
        if array is not None and tuple(torch.as_tensor(array).shape) != (n,):
            raise ValueError(f"{name} must be [{n}], got {tuple(torch.as_tensor(array).shape)}")
    k = min(k, n)
    suspicion = self_influence if self_influence is not None else -values
    return ValuationReport(
        labels=train.targets.cpu(),
        values=values,
        self_influence=self_influence,
        most_valuable=None if values is None else torch.as_tensor(values).topk(k).indices,
        least_valuable=None if values is None else (-torch.as_tensor(values)).topk(k).indices,
        most_suspicious=torch.as_tensor(suspicion).topk(k).indices,
        top=None if scores is None else top_examples(torch.as_tensor(scores), k),
        flipped=None if flipped is None else torch.as_tensor(flipped).bool(),
        mislabel=None if flipped is None else mislabel_detection(suspicion, flipped),
        pruning=pruning,
    )
