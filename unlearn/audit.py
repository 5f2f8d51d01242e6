"""The audit record of one unlearning run and the JSON-lines log it is appended to.

A record says what was removed (the request), from which model and data (fingerprints), how
(method configuration, mask, seed, library versions), what came out (fingerprint after, metrics,
timings) and when. It round-trips through JSON. Appending never corrupts an existing log: the new
log is written beside the old one, flushed to disk and swapped in with an atomic rename while a
lock file keeps other appenders out, so a crash leaves either the old or the new log, whole.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tda.atomic import write_bytes_atomic
from unlearn.request import UnlearningRequest


@dataclass(frozen=True)
class AuditRecord:
    """What one unlearning run did, for the audit log.

    Attributes:
        request: the validated request (its id, forget indices, seed, target fingerprint).
        method: qualified class name of the method.
        method_config: JSON description of the method's hyperparameters.
        mask: summary of the caller's mask (trainable / total / fingerprint) or ``None``.
        model_fingerprint_before: fingerprint of the model handed in.
        model_fingerprint_after: fingerprint of the model handed back.
        data_fingerprint: fingerprint of the training set the indices refer to.
        metrics: UA / RA / TA / MIA in percent (those that could be computed).
        timings: wall-clock seconds (``"unlearn"``, ``"metrics"``).
        no_op: ``True`` when the forget set was empty and the model was returned unchanged.
        library_version: version of ``tda-unlearn``.
        torch_version: version of ``torch``.
        timestamp: UTC time the run finished, ISO 8601.
    """

    request: UnlearningRequest
    method: str
    method_config: dict[str, Any]
    mask: dict[str, Any] | None
    model_fingerprint_before: str
    model_fingerprint_after: str
    data_fingerprint: str
    metrics: dict[str, float]
    timings: dict[str, float]
    no_op: bool
    library_version: str
    torch_version: str
    timestamp: str

    @property
    def request_id(self) -> str:
        """The request's identifier."""
        return self.request.request_id

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary; the request id and seed are repeated at the top."""
        content = {f.name: getattr(self, f.name) for f in fields(self)}
        content["request"] = self.request.to_dict()
        return {"request_id": self.request_id, "seed": self.request.seed, **content}

    def to_json(self) -> str:
        """One line of strict JSON (no NaN), keys sorted."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, content: Mapping[str, Any]) -> AuditRecord:
        """The record :meth:`to_dict` described.

        Raises:
            ValueError: unknown or missing fields, or a top-level id / seed that disagrees with
                the request.
        """
        content = dict(content)
        request_id, seed = content.pop("request_id", None), content.pop("seed", None)
        names = {f.name for f in fields(cls)}
        if set(content) != names:
            raise ValueError(f"audit record fields {sorted(content)} differ from {sorted(names)}")
        content["request"] = UnlearningRequest.from_dict(content["request"])
        record = cls(**content)
        if (request_id, seed) != (record.request_id, record.request.seed):
            raise ValueError("audit record's request_id / seed disagree with its request")
        return record

    @classmethod
    def from_json(cls, line: str) -> AuditRecord:
        """The record :meth:`to_json` wrote."""
        return cls.from_dict(json.loads(line))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def append_audit(record: AuditRecord, log_path: str | os.PathLike) -> None:
    """Append ``record`` as one JSON line to ``log_path`` (created if missing), atomically.

    Raises:
        ValueError: the existing log does not end with a newline (it was damaged elsewhere);
            nothing is written.
    """
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (record.to_json() + "\n").encode()
    with _locked(path):
        existing = path.read_bytes() if path.exists() else b""
        if existing and not existing.endswith(b"\n"):
            raise ValueError(f"audit log {path} does not end with a newline; refusing to append")
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else None
        write_bytes_atomic(path, existing + line)
        if mode is not None:  # the rename published a fresh file; keep the log's permissions
            os.chmod(path, mode)


def read_audit_log(log_path: str | os.PathLike) -> list[AuditRecord]:
    """Every record in a JSON-lines audit log, in the order appended."""
    lines = Path(log_path).read_text().splitlines()
    return [AuditRecord.from_json(line) for line in lines if line.strip()]
