"""The audit record of one unlearning run and the JSON-lines log it is appended to.

A record says what was removed (the request), from which model and data (fingerprints), how
(method configuration, mask, seed, library versions), what came out (fingerprint after, metrics,
timings) and when. It round-trips through JSON. Appending never corrupts an existing log: the new
log is written beside the old one, flushed to disk and swapped in with an atomic rename while a
lock file keeps other appenders out, so a crash leaves either the old or the new log, whole.

Each line carries ``chain_sha256``: the SHA-256 of the line before it (its bytes; blank lines,
a stray newline say, are skipped by the reader and the writer alike) and of its own record, so
reading the log finds a line edited, removed or moved (all but the last lines' removal). A
checksum against accidents and casual edits, not a signature: whoever rewrites the log can
recompute the chain. Lines written before the chain existed read as before; a line
without a chain is taken for one of them only where it could be one: before every chained line,
and without a ``run_id`` (added with the chain, so every record with one was written chained).
Otherwise its chain was removed, and the edit it would hide is refused like any other.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

from tda.atomic import make_directories, write_bytes_atomic
from unlearn.lineage import check_record
from unlearn.request import UnlearningRequest


@dataclass(frozen=True)
class AuditRecord:
    """What one unlearning run did, for the audit log.

    Attributes:
        request: the validated request (its id, forget indices, seed, target fingerprint).
        method: qualified class name of the method.
        method_config: JSON description of the method's hyperparameters.
        mask: summary of the caller's mask (trainable / total / fingerprint); with none, of the
            parameters the model froze with ``requires_grad=False`` (also naming them); else
            ``None``.
        model_fingerprint_before: fingerprint of the model handed in.
        model_fingerprint_after: fingerprint of the model handed back.
        data_fingerprint: fingerprint of the training set the indices refer to.
        metrics: UA / RA / TA / MIA in percent (those that could be computed).
        timings: wall-clock seconds (``"unlearn"``, ``"metrics"``).
        no_op: ``True`` when the forget set was empty and the model was returned unchanged.
        library_version: version of ``tda-unlearn``.
        torch_version: version of ``torch``.
        timestamp: UTC time the run finished, ISO 8601.
        torch_threads: intra-op threads the run used (same seed and threads on the same CPU:
            the same weights, bit for bit; other threads can round differently); ``None`` in
            records written before it was recorded.
        device: where the model ran (``"cpu"``, ``"cuda:0"``); ``None`` likewise.
        metrics_before: the same metrics of the model handed in, on the same points
            (``Unlearner(compare_before=True)``, the default), so the record shows what
            changed; ``None`` when not measured.
        run_id: random identifier of this run (the request id is a digest of the request, the
            same for every run of it); ``None`` in records written before it was recorded.
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
    torch_threads: int | None = None
    device: str | None = None
    metrics_before: dict[str, float] | None = None
    run_id: str | None = None

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
        missing = names - set(content) - set(LATER_FIELDS)  # older records lack the later ones
        if set(content) - names or missing:
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


LATER_FIELDS = ("torch_threads", "device", "metrics_before", "run_id")
"""Fields added after the first records were written: a record without them still reads."""

CHAIN_KEY = "chain_sha256"


def new_run_id() -> str:
    """A random identifier for one unlearning run (32 hex digits)."""
    return uuid.uuid4().hex


def _chain(previous_line: bytes, record_json: str) -> str:
    """SHA-256 of the previous line's bytes (``b""`` for the first) and a record's JSON."""
    return hashlib.sha256(previous_line + b"\n" + record_json.encode()).hexdigest()


def _record_lines(content: bytes) -> list[tuple[int, bytes]]:
    """The lines of a log that hold records, each with its number (from 1): blank lines are
    skipped. The one rule for the reader and the writer: a record written after a blank line
    is chained to the record before it, as the reader checks it."""
    lines = enumerate(content.splitlines(), start=1)
    return [(number, line) for number, line in lines if line.strip()]


def _last_line(existing: bytes) -> bytes:
    """The line a new record is chained to: the log's last record line (``b""`` for none)."""
    lines = _record_lines(existing)
    return lines[-1][1] if lines else b""


def _log_line(record: AuditRecord, existing: bytes) -> bytes:
    content = record.to_dict()
    content[CHAIN_KEY] = _chain(_last_line(existing), record.to_json())
    return (json.dumps(content, sort_keys=True, allow_nan=False) + "\n").encode()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def append_audit(
    record: AuditRecord,
    log_path: str | os.PathLike,
    *,
    check: Callable[[list[AuditRecord]], None] | None = None,
) -> None:
    """Append ``record`` as one JSON line to ``log_path`` (created if missing), atomically,
    chained to the line before it (``chain_sha256``, see the module's description).

    Args:
        record: the record to append.
        log_path: the JSON-lines log.
        check: called with the log's records under the lock, just before writing; what it
            raises refuses the append. It sees the log as it is then, with whatever another
            process appended since the caller last read it. Default: the lineage rule
            (:func:`unlearn.lineage.check_record`), so no append, by hand or not, logs a
            request that would bring back examples the log shows forgotten.

    Raises:
        ValueError: the existing log does not end with a newline (it was damaged elsewhere),
            has a line :func:`read_audit_log` refuses, or does not allow ``record``
            (``check``); nothing is written.
    """
    if check is None:
        refusal = f"audit log {log_path} does not allow this record"
        check = partial(check_record, record, refusal=refusal)
    path = Path(log_path)
    make_directories(path.parent)
    with _locked(path):
        existing = path.read_bytes() if path.exists() else b""
        _check_whole(path, existing)
        check(_records_of(existing, path))
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else None
        write_bytes_atomic(path, existing + _log_line(record, existing))
        if mode is not None:  # the rename published a fresh file; keep the log's permissions
            os.chmod(path, mode)


def _check_whole(path: Path, existing: bytes) -> None:
    if existing and not existing.endswith(b"\n"):
        raise ValueError(
            f"audit log {path} does not end with a newline; refusing to append (its last line "
            "was cut off or edited: restore the log from a copy, or, if that line is no record, "
            "remove it, and run again)"
        )


def check_audit_log(log_path: str | os.PathLike) -> list[AuditRecord]:
    """The records of ``log_path`` (none if it does not exist yet), refusing a log that a run
    could not be appended to, so that a request is refused before it runs, not after.

    Raises:
        ValueError: the log is damaged (no final newline, or a line that is no record).
    """
    path = Path(log_path)
    if not path.exists():
        return []
    _check_whole(path, path.read_bytes())
    return read_audit_log(path)


def read_audit_log(log_path: str | os.PathLike) -> list[AuditRecord]:
    """Every record in a JSON-lines audit log, in the order appended, each line's chain checked.

    Raises:
        ValueError: a line that is no audit record, or whose ``chain_sha256`` does not match it
            and the line before (it or a line before it edited, or a line before it removed or
            moved), or that lacks one where every line was written with one (after a chained
            line, or with a ``run_id``), its number named.
    """
    return _records_of(Path(log_path).read_bytes(), log_path)


def _records_of(content: bytes, log_path: str | os.PathLike) -> list[AuditRecord]:
    """The records of a log's ``content``, checked as :func:`read_audit_log` says."""
    records, previous, chain_seen = [], b"", False
    for number, line in _record_lines(content):
        try:
            record, chained = _read_line(line, previous)
            if not chained:
                _check_unchained(record, chain_seen)
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"audit log {log_path}, line {number}: {error}") from error
        records.append(record)
        previous, chain_seen = line, chain_seen or chained
    return records


def _read_line(line: bytes, previous: bytes) -> tuple[AuditRecord, bool]:
    """The line's record and whether it carries a chain (checked against ``previous``)."""
    content = json.loads(line)
    chained = content.pop(CHAIN_KEY, None) if isinstance(content, dict) else None
    record = AuditRecord.from_dict(content)
    if chained is not None and chained != _chain(previous, record.to_json()):
        raise ValueError(
            "its chain_sha256 does not match its record and the line before it: the line was "
            "edited, or a line before it was edited, removed or moved"
        )
    return record, chained is not None


def _check_unchained(record: AuditRecord, chain_seen: bool) -> None:
    """A line without ``chain_sha256`` reads only as one written before the chain existed."""
    if chain_seen:
        raise ValueError(
            "it has no chain_sha256 but follows a chained line, and every line appended since "
            "the chain existed carries one: its chain was removed (was the line edited?)"
        )
    if record.run_id is not None:
        raise ValueError(
            f"it has no chain_sha256 but has a run_id ({record.run_id}), and every record with a "
            "run_id was written with one: its chain was removed (was the line edited?)"
        )
