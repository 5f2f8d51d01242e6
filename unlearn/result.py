"""``UnlearningResult``: the unlearned model with its metrics, timings and audit record."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save
from torch import nn

from tda.atomic import write_bytes_atomic
from tda.checkpoints import check_state_fits, savable_state
from tda.fingerprint import model_fingerprint
from unlearn.audit import AuditRecord, append_audit
from unlearn.request import IndexLike, UnlearningRequest

AUDIT_FILE, LEGACY_MODEL_FILE = "audit.json", "model.safetensors"


def model_file(fingerprint: str) -> str:
    """The weights file of a result whose model has ``fingerprint``: named by it, so a saved
    record names weights that no later save overwrites (see :meth:`UnlearningResult.save`)."""
    return f"model-{fingerprint[:16]}.safetensors"


def _digest(record: dict) -> str:
    """SHA-256 of a record's canonical JSON."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, allow_nan=False).encode()).hexdigest()


def _saved_record(directory: Path) -> dict | None:
    """The content of ``directory``'s ``audit.json`` (``None`` if there is none).

    Raises:
        ValueError: an ``audit.json`` that is no saved result's record.
    """
    path = directory / AUDIT_FILE
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not the audit record of a saved result: {error}") from error
    if not isinstance(content, dict) or "model_fingerprint_after" not in content:
        raise ValueError(f"{path} is not the audit record of a saved result")
    return content


def _named_weights(directory: Path, fingerprint: str) -> Path | None:
    """The weights file of the result with ``fingerprint`` in ``directory``, or
    ``model.safetensors`` as saved before weights were named by their fingerprint."""
    for path in (directory / model_file(fingerprint), directory / LEGACY_MODEL_FILE):
        if path.exists():
            return path
    return None


def _weights_of(directory: Path, fingerprint: str) -> Path:
    """:func:`_named_weights`, which must exist."""
    path = _named_weights(directory, fingerprint)
    if path is None:
        raise ValueError(
            f"weights in {directory} do not match the audit's fingerprint: no "
            f"{model_file(fingerprint)} there"
        )
    return path


def _previous_result(directory: Path, record: dict, overwrite: bool) -> dict | None:
    """The record of the result ``directory`` holds, which saving ``record`` replaces.

    Raises:
        FileExistsError: without ``overwrite``, ``directory`` holds another result or an
            ``audit.json`` that is none.
    """
    try:
        previous = _saved_record(directory)
    except ValueError as error:
        if not overwrite:
            raise FileExistsError(f"{error}; save elsewhere or pass overwrite=True") from error
        return None
    if previous is None or overwrite:
        return previous
    if {k: v for k, v in previous.items() if k != "record_sha256"} != record:
        raise FileExistsError(
            f"{directory} holds the result of another run (request "
            f"{previous.get('request_id')}); save elsewhere or pass overwrite=True"
        )
    return previous


@dataclass(frozen=True)
class UnlearningResult:
    """A new model (the caller's is untouched) and the record of how it was made.

    Attributes:
        model: the unlearned model.
        audit: request, fingerprints before / after, data fingerprint, method configuration,
            seed, versions, timestamp, metrics and timings.
    """

    model: nn.Module
    audit: AuditRecord

    @property
    def metrics(self) -> dict[str, float]:
        """UA / RA / TA / MIA in percent (those that could be computed)."""
        return self.audit.metrics

    @property
    def metrics_before(self) -> dict[str, float] | None:
        """The same metrics of the model before unlearning (``None`` if not measured)."""
        return self.audit.metrics_before

    @property
    def timings(self) -> dict[str, float]:
        """Wall-clock seconds of the unlearning run and of the metrics."""
        return self.audit.timings

    def save(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``model-<fingerprint>.safetensors`` and ``audit.json`` into ``directory``.

        ``audit.json`` carries the SHA-256 of its record (``record_sha256``), which
        :meth:`load` checks: an edited record is refused (a checksum against accidents, not a
        signature: whoever edits it can recompute it).

        The weights file is named by the model's fingerprint and written first, then the record
        replaces ``audit.json`` atomically, then the replaced result's weights are removed
        (no other file is touched): a process killed at any point leaves a complete result, the
        old one or the new one (with ``overwrite=True``), never a mix.

        Raises:
            FileExistsError: ``directory`` holds another result, or an ``audit.json`` that is no
                result's (saving this one again is fine); pass ``overwrite=True`` to replace it.
        """
        directory = Path(directory)
        record = self.audit.to_dict()
        previous = _previous_result(directory, record, overwrite)
        weights = directory / model_file(self.audit.model_fingerprint_after)
        write_bytes_atomic(weights, save(savable_state(self.model)))
        content = {**record, "record_sha256": _digest(record)}
        text = json.dumps(content, indent=2, sort_keys=True, allow_nan=False)
        write_bytes_atomic(directory / AUDIT_FILE, text.encode())
        if previous is not None:
            replaced = _named_weights(directory, previous["model_fingerprint_after"])
            if replaced not in (None, weights):
                replaced.unlink()
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: nn.Module) -> UnlearningResult:
        """Load a saved result into ``model`` (same architecture and dtype, modified in place).

        The weights are checked against the audit's fingerprint and ``model``'s layout before
        any is copied, so a refused result leaves ``model`` as it was.

        Raises:
            ValueError: no saved result in ``directory``; the weights do not fit ``model`` or do
                not match the audit's fingerprint; or the audit record does not match its
                checksum, or lacks one although it was saved by a version that writes it (edited).
        """
        directory = Path(directory)
        content = _saved_record(directory)
        if content is None:
            raise ValueError(f"{directory} holds no saved result (no {AUDIT_FILE})")
        recorded = content.pop("record_sha256", None)
        if recorded is None and content.get("run_id") is not None:  # run_id came after checksums
            raise ValueError(
                f"the audit record in {directory} has no record_sha256, which every record with "
                "a run_id was saved with: it was edited after it was saved"
            )
        if recorded is not None and recorded != _digest(content):
            raise ValueError(f"the audit record in {directory} was edited after it was saved")
        audit = AuditRecord.from_dict(content)
        state = load_file(str(_weights_of(directory, audit.model_fingerprint_after)))
        if model_fingerprint(state) != audit.model_fingerprint_after:
            raise ValueError(f"weights in {directory} do not match the audit's fingerprint")
        check_state_fits(f"the model file in {directory}", state, model)
        model.load_state_dict(state, strict=True)
        return cls(model=model.eval(), audit=audit)

    def append_audit(self, log_path: str | os.PathLike) -> None:
        """Append the audit record as one JSON line to ``log_path`` (see :mod:`unlearn.audit`)."""
        append_audit(self.audit, log_path)

    def next_request(self, forget_indices: IndexLike, *, seed: int | None = None):
        """A request to forget more examples from this result's model (sequential unlearning).

        It targets this result's model fingerprint and data, and counts everything forgotten so
        far as ``previously_forgotten`` so that no later step retrains on it.

        Args:
            forget_indices: further training-set positions to forget.
            seed: the new request's seed (default: this request's seed).
        """
        request = self.audit.request
        return UnlearningRequest(
            forget_indices=forget_indices,
            train_size=request.train_size,
            seed=request.seed if seed is None else seed,
            model_fingerprint=self.audit.model_fingerprint_after,
            data_fingerprint=self.audit.data_fingerprint,
            previously_forgotten=request.forgotten_after(),
        )
