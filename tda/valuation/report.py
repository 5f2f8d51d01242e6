"""One-call data-valuation summary: which training examples matter, and which look wrong.

``valuation_report(train, scores=...)`` turns any attributor's scores ``[n_query, n_train]``
(and/or self-influence, known wrong labels, a pruning curve) into a :class:`ValuationReport`;
``report.save(directory)`` writes ``valuation.json``, the figure ``valuation.png`` and the
per-example arrays ``values.npz``; the JSON, written last, records the other two files' sha256
and its own content's, which ``ValuationReport.load(directory)`` verifies before rebuilding it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tda.atomic import file_digest, make_directories, write_atomic, write_bytes_atomic
from tda.data.examples import Examples
from tda.ranking import TopExamples, top_examples, top_indices
from tda.valuation.mislabel import MislabelReport, mislabel_detection
from tda.valuation.pruning import PruningCurve
from tda.valuation.values import require_finite, values_from_scores

SUMMARY, FIGURE, ARRAYS = "valuation.json", "valuation.png", "values.npz"
VALUE_NAME, SUSPICION_NAME = "value (mean score over queries)", "self-influence"
TOP_FIELDS = ("helpful", "helpful_scores", "harmful", "harmful_scores")


@dataclass(frozen=True)
class ValuationReport:
    """Per-example values and what they reveal (fields are ``None`` where no input allowed them).

    Attributes:
        values: ``[n]`` mean score over the queries (high: helps the queries' outputs).
        self_influence: ``[n]`` self-influence (high: memorised, possibly mislabelled).
        labels: ``[n]`` training labels.
        most_valuable / least_valuable: ``k`` training indices, most extreme first (ties to the
            lower index, as in ``mislabel``'s recall curve).
        most_suspicious: ``k`` indices of highest self-influence (or lowest value).
        top: per query, the most helpful and harmful training examples (``tda.ranking``).
        flipped: ``[n]`` mask of labels known to be wrong.
        mislabel: detection of those wrong labels by the suspicion ranking.
        pruning: accuracy after removing the lowest-value examples versus at random.
        value_name / suspicion_name: what ``values`` and ``self_influence`` are, as the summary
            and the figure name them.
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
    value_name: str = VALUE_NAME
    suspicion_name: str = SUSPICION_NAME

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
        summary["names"] = {"value": self.value_name, "suspicion": self.suspicion_name}
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
        (every example's labels, values, self-influence and known-wrong mask, each query's top
        examples and the mislabel recall curve, those present) into ``directory``; returns the
        three paths. :meth:`load` reads them back.

        Each file is published atomically, the summary last: it records the sha256 of the other
        two (``"sha256"``: file name to digest) and of its own content (``"summary_sha256"``), so
        it describes only a finished save. Both are made in memory before either is published,
        so a failing save leaves the previous report; a save killed between two publications
        leaves files that the digests disown.

        Raises:
            ValueError: a NaN or infinite number in the summary (strict JSON cannot hold it);
                nothing is written.
        """
        from tda.valuation.figure import plot_valuation

        record = self.as_dict()
        _json_text(record)  # refuse a NaN before anything is published
        directory = Path(directory)
        make_directories(directory)
        content = self._arrays()
        digests = {FIGURE: plot_valuation(self, directory / FIGURE)}
        digests[ARRAYS] = write_atomic(directory / ARRAYS, lambda sink: sink.write(content))
        record["sha256"] = digests
        record["summary_sha256"] = _content_digest(record)
        write_bytes_atomic(directory / SUMMARY, _json_text(record).encode())
        return [directory / name for name in (SUMMARY, FIGURE, ARRAYS)]

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ValuationReport:
        """The report :meth:`save` wrote into ``directory``, after checking every digest.

        Rankings, mislabel detection and pruning come from ``valuation.json``; per-example
        arrays, top examples and the recall curve from ``values.npz``, with their saved dtypes.

        Raises:
            FileNotFoundError: a file of the report is missing.
            ValueError: ``valuation.json`` no longer matches its own digest (edited), or another
                file no longer matches the digest it records (edited, or from a later save that
                was killed before publishing its summary).
        """
        directory = Path(directory)
        record = _verified_summary(directory / SUMMARY)
        for name, digest in record.pop("sha256").items():
            if file_digest(directory / name) != digest:
                raise ValueError(
                    f"{directory / name} does not match the sha256 that {SUMMARY} records for it: "
                    "it was changed after the save, or a later save was killed before publishing "
                    "its summary; save the report again"
                )
        with np.load(directory / ARRAYS, allow_pickle=False) as saved:
            arrays = {name: torch.from_numpy(saved[name]) for name in saved.files}
        rankings = {
            name: torch.tensor([entry["index"] for entry in record[name]], dtype=torch.int64)
            for name in ("most_valuable", "least_valuable", "most_suspicious")
            if name in record
        }
        top = None
        if "top_helpful" in arrays:
            top = TopExamples(*(arrays[f"top_{field}"] for field in TOP_FIELDS))
        return cls(
            labels=arrays["labels"],
            values=arrays.get("values"),
            self_influence=arrays.get("self_influence"),
            top=top,
            flipped=arrays.get("flipped"),
            mislabel=_mislabel(record.get("mislabel"), arrays),
            pruning=_pruning(record.get("pruning")),
            **rankings,
            **_names(record.get("names")),
        )

    def _arrays(self) -> bytes:
        """The per-example arrays as ``.npz`` bytes (loadable with ``np.load``, no pickle)."""
        named = {"labels": self.labels, "values": self.values}
        named |= {"self_influence": self.self_influence, "flipped": self.flipped}
        if self.top is not None:
            named |= {f"top_{field}": getattr(self.top, field) for field in TOP_FIELDS}
        if self.mislabel is not None:
            named["mislabel_fractions"] = np.array(list(self.mislabel.found_at), dtype=np.float64)
            named["mislabel_recall_curve"] = self.mislabel.recall_curve
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
    value_name: str = VALUE_NAME,
    suspicion_name: str = SUSPICION_NAME,
) -> ValuationReport:
    """Summarise per-example values and self-influence of a training set in one call.

    Args:
        train: the training examples scored.
        scores: attribution scores ``[n_query, n_train]`` of any attributor; gives ``values``
            (their mean over queries) and each query's top helpful and harmful examples.
        values: ``[n_train]`` values, instead of ``scores`` (not both).
        self_influence: ``[n_train]``, e.g. ``InfluenceFunction.self_influence()`` or
            :func:`~tda.valuation.self_scores`, or any other suspicion score (high: possibly
            mislabelled) such as :func:`~tda.valuation.checkpoint_loss`; ranks suspicion (else
            minus the values do).
        flipped: ``[n_train]`` mask of labels known to be wrong (e.g. planted by
            :func:`~tda.valuation.flip_labels`): adds a mislabel-detection report.
        pruning: a :func:`~tda.valuation.pruning_curve` computed from these values.
        k: examples listed per ranking.
        value_name, suspicion_name: what the values and the suspicion score are, for the
            summary and the figure (e.g. ``suspicion_name="mean checkpoint loss"``).

    Raises:
        ValueError: neither scores, values nor self-influence given, both scores and values,
            lengths that differ, or a NaN or infinite score, value or self-influence (the
            first one is named: a sort would rank it first in every list).
    """
    if scores is not None and values is not None:
        raise ValueError(
            "give scores or values, not both: the values are the scores' mean over queries, so "
            "given values would be ignored; pass values alone to rank by them"
        )
    if scores is not None:
        values = values_from_scores(scores)
    if values is None and self_influence is None:
        raise ValueError("give scores, values or self_influence to value the training set")
    n = len(train)
    values = _per_example("values", values, n)
    self_influence = _per_example("self_influence", self_influence, n)
    k = min(k, n)
    suspicion = self_influence if self_influence is not None else -values
    return ValuationReport(
        labels=train.targets.cpu(),
        values=values,
        self_influence=self_influence,
        most_valuable=None if values is None else top_indices(values, k),
        least_valuable=None if values is None else top_indices(values, k, largest=False),
        most_suspicious=top_indices(suspicion, k),
        top=None if scores is None else top_examples(torch.as_tensor(scores), k),
        flipped=None if flipped is None else torch.as_tensor(flipped).bool(),
        mislabel=None if flipped is None else mislabel_detection(suspicion, flipped),
        pruning=pruning,
        value_name=value_name,
        suspicion_name=suspicion_name,
    )


def _names(recorded: dict | None) -> dict:
    """The report's ``value_name`` and ``suspicion_name`` as ``valuation.json`` records them (a
    report saved before they were recorded gets the defaults)."""
    recorded = recorded or {}
    return {
        "value_name": recorded.get("value", VALUE_NAME),
        "suspicion_name": recorded.get("suspicion", SUSPICION_NAME),
    }


def _per_example(name: str, array: Tensor | np.ndarray | None, n: int) -> Tensor | None:
    """``array`` as a tensor ``[n]`` of finite numbers (``None`` stays ``None``)."""
    if array is None:
        return None
    tensor = torch.as_tensor(array)
    if tuple(tensor.shape) != (n,):
        raise ValueError(f"{name} must be [{n}], got {tuple(tensor.shape)}")
    return require_finite(name, tensor)


def _json_text(record: dict) -> str:
    """Indented strict JSON: NaN and infinity are refused, not written as invalid tokens."""
    try:
        return json.dumps(record, indent=2, allow_nan=False) + "\n"
    except ValueError as error:
        raise ValueError(f"the report holds a number that strict JSON cannot: {error}") from error


def _content_digest(record: dict) -> str:
    """sha256 of ``record`` in a canonical encoding (sorted keys, no spaces), which a reload
    reproduces: Python writes every float so that it reads back equal."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _verified_summary(path: Path) -> dict:
    """The summary at ``path``, refused unless it matches the digest of its content it records."""
    record = json.loads(path.read_text(), parse_constant=_refuse_constant)
    recorded = record.pop("summary_sha256", None) if isinstance(record, dict) else None
    if recorded is None or "sha256" not in record or _content_digest(record) != recorded:
        raise ValueError(
            f"{path} does not match the sha256 of its content that it records (summary_sha256): "
            "it was edited, or not written by ValuationReport.save; save the report again"
        )
    return record


def _refuse_constant(name: str):
    raise ValueError(f"a report summary holds {name}, which strict JSON does not allow")


def _mislabel(record: dict | None, arrays: dict[str, Tensor]) -> MislabelReport | None:
    if record is None:
        return None
    fractions = arrays["mislabel_fractions"].tolist()
    return MislabelReport(
        found_at=dict(zip(fractions, record["found_at"].values(), strict=True)),
        auc=record["auc"],
        n_flipped=record["n_flipped"],
        n_train=record["n_train"],
        recall_curve=arrays["mislabel_recall_curve"].numpy(),
    )


def _pruning(record: dict | None) -> PruningCurve | None:
    if record is None:
        return None
    return PruningCurve(
        fractions=tuple(record["fractions"]),
        seeds=tuple(record["seeds"]),
        accuracy={
            strategy: np.array(curve["accuracy"], dtype=np.float64)
            for strategy, curve in record["curves"].items()
        },
        confidence=record["confidence"],
    )
