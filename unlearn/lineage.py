"""The audit log's lineage rule: which requests a log allows on a model.

A request may not bring back examples that the log shows were already forgotten: on a model an
earlier request produced, it must carry what that request had forgotten
(``previously_forgotten``); on a model that earlier requests unlearned from (it, or a model made
from it), its ``forget_indices`` must hold all that they forgot. :class:`~unlearn.Unlearner`
checks it before a run, and :func:`~unlearn.audit.append_audit` again under the log's lock, so
two runs at once cannot both log what neither would be allowed after the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unlearn.audit import AuditRecord


def check_history(request, model_before: str, records: list[AuditRecord]) -> None:
    """Refuse a request the audit log shows would bring back examples already forgotten."""
    _check_carries_earlier_forgets(request, model_before, records)
    _check_not_superseded(request, model_before, records)


def check_record(record: AuditRecord, records: list[AuditRecord], *, refusal: str) -> None:
    """:func:`check_history` of a record about to be appended to a log holding ``records``;
    a refusal reads ``"<refusal>: <why>"``."""
    try:
        check_history(record.request, record.model_fingerprint_before, records)
    except ValueError as error:
        raise ValueError(f"{refusal}: {error}") from error


def _check_carries_earlier_forgets(request, model_before: str, records: list[AuditRecord]):
    """Refuse a request on a model the log says an earlier request produced, unless it carries
    what that request had forgotten (``previously_forgotten``): built by hand instead of by
    :meth:`UnlearningResult.next_request`, it would put those examples back in the retain set."""
    produced = [r for r in records if r.model_fingerprint_after == model_before]
    if not produced:
        return
    earlier = produced[-1]
    forgotten = set(earlier.request.forgotten_after())
    lacking = sorted(forgotten - set(request.previously_forgotten))
    if lacking:
        raise ValueError(
            f"request {request.request_id} is for model {model_before[:12]}..., the output of "
            f"request {earlier.request_id} in the audit log, which had forgotten "
            f"{len(forgotten)} examples; this request's previously_forgotten lacks {len(lacking)} "
            f"of them (e.g. {lacking[0]}), so they would be retained (or forgotten twice): build "
            "it with result.next_request(...), or pass previously_forgotten"
        )


def _descendant_records(model_before: str, records: list[AuditRecord]) -> list[AuditRecord]:
    """The logged requests on ``model_before`` and, transitively, on every model made from it."""
    lineage, found, grew = {model_before}, set(), True
    while grew:  # the log is in order, so one pass finds all but lines appended out of order
        grew = False
        for position, record in enumerate(records):
            if record.model_fingerprint_before in lineage and position not in found:
                found.add(position)
                lineage.add(record.model_fingerprint_after)
                grew = True
    return [records[position] for position in sorted(found)]


def _check_not_superseded(request, model_before: str, records: list[AuditRecord]) -> None:
    """Refuse a request on a model the log says earlier requests already unlearned from (it, or
    a model made from it), unless its ``forget_indices`` hold all that they forgot: this model
    still holds those examples (``previously_forgotten`` would claim they were gone), so the new
    model would hold them again. An empty request is refused too: it would hand this model back
    as a result. The same request run again passes while no later one was made from its result."""
    forgotten, missing = set(request.forget_indices), {}  # earlier request id -> examples lacked
    for record in _descendant_records(model_before, records):
        lacking = set(record.request.forget_indices) - forgotten
        if lacking:
            missing.setdefault(record.request_id, set()).update(lacking)
    if not missing:
        return
    lacked = sorted(set().union(*missing.values()))
    claimed = len(set(lacked) & set(request.previously_forgotten))
    note = f"; {claimed} of them in its previously_forgotten, never removed here" if claimed else ""
    earlier = ("requests " if len(missing) > 1 else "request ") + ", ".join(missing)
    raise ValueError(
        f"request {request.request_id} is for model {model_before[:12]}..., which the audit log "
        f"shows {earlier} already unlearned from (from it or a model made from it); its "
        f"forget_indices lack {len(lacked)} of the examples forgotten from it (e.g. "
        f"{lacked[:5]}{note}), which this model still holds, so the new model would hold them "
        "again: unlearn from the latest result (result.next_request(...)), or add them to "
        "forget_indices"
    )
