"""``Unlearner``: run one method on one request, safely, and record what was done.

``Unlearner(method).unlearn(model, train_data, request)`` checks the request against the model
and data it is given, works on a deep copy (the caller's model is never mutated, even when the run
fails), times the run, measures UA / RA / TA / MIA and returns an
:class:`~unlearn.result.UnlearningResult` with an audit record. An empty forget set returns the
model unchanged for methods that do not need forget data and is refused by those that do.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn

from tda.data.examples import Examples, as_examples, check_input_dtype
from tda.describe import describe, qualified_name
from tda.fingerprint import model_fingerprint
from tda.outputs import logits_of
from tda.task import IGNORE_INDEX, outside_classes
from tda.timing import warm_up_torch
from unlearn.audit import AuditRecord, append_audit, check_audit_log, new_run_id
from unlearn.lineage import check_history, check_record
from unlearn.masks import Mask, check_mask, describe_mask
from unlearn.methods.base import ForgetSplit, UnlearningMethod
from unlearn.metrics import unlearning_metrics
from unlearn.request import UnlearningRequest
from unlearn.result import UnlearningResult


def _library_version() -> str:
    try:
        return version("tda-unlearn")
    except PackageNotFoundError:
        return "unknown"


def _check_request(request, method, model_before: str, train: Examples, data_before: str) -> None:
    if request.model_fingerprint is not None and request.model_fingerprint != model_before:
        raise ValueError(
            f"request {request.request_id} targets model {request.model_fingerprint[:12]}... but "
            f"was given model {model_before[:12]}...; refusing to unlearn from a different model"
        )
    if len(train) != request.train_size:
        raise ValueError(
            f"request {request.request_id} refers to a training set of {request.train_size} "
            f"examples but {len(train)} were given"
        )
    if request.data_fingerprint is not None and request.data_fingerprint != data_before:
        raise ValueError(
            f"request {request.request_id} targets training data "
            f"{request.data_fingerprint[:12]}... but was given data {data_before[:12]}...: another "
            "split, the same examples in another order, or other values or dtypes (the "
            "fingerprint covers the inputs' and targets' values, dtypes, shapes and order); "
            "refusing to unlearn from different training data"
        )
    if request.is_empty and method.requires_forget_set:
        raise ValueError(
            f"{type(method).__name__} needs forget examples but request {request.request_id} "
            "has an empty forget set"
        )


def _on_model(model: nn.Module, data: Examples, name: str) -> Examples:
    """``data`` (called ``name``) on the model's device; floating inputs of another dtype are
    refused, as everywhere in the library (:func:`tda.data.examples.check_input_dtype`), not
    cast."""
    reference = next(iter(model.parameters()), None)
    if reference is None:
        raise ValueError("the model has no parameters to unlearn")
    try:
        check_input_dtype(model, data.inputs)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error
    return data.to(reference.device)


def _check_fits(model: nn.Module, data: Examples, name: str, *, classes: bool) -> None:
    """Refuse ``data`` the model cannot read before the run, not in the metrics after it.

    The model runs on the first example (eval mode, no gradients, its modes restored: the
    caller's model and the random state are untouched). With ``classes`` (the metrics read
    targets as class indices into the outputs' last axis) every target must be one.
    """
    example = _on_model(model, data.subset([0]), name)
    try:
        logits = logits_of(model, example)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise ValueError(
            f"{name} does not fit the model: the forward pass on its first example (inputs of "
            f"shape {list(example.inputs.shape[1:])}) failed: {error}"
        ) from error
    if classes:
        _check_classes(data.targets, logits, name)


def _check_classes(targets: torch.Tensor, logits: torch.Tensor, name: str) -> None:
    """Targets ``[n]`` for outputs ``[1, C]``, ``[n, T]`` for ``[1, T, C]`` (sequences may skip
    positions with :data:`~tda.task.IGNORE_INDEX`), each in ``[0, C)``."""
    classes, per_example = logits.shape[-1], list(logits.shape[1:-1])
    if targets.is_floating_point() or list(targets.shape[1:]) != per_example:
        expected = ", ".join(["n", *map(str, per_example)])
        raise ValueError(
            f"{name} has {targets.dtype} targets of shape {list(targets.shape)}, but the metrics "
            f"read class indices of shape [{expected}] for the model's outputs of shape "
            f"{list(logits.shape[1:])} (pass compute_metrics=False to skip the metrics)"
        )
    ignored = IGNORE_INDEX if targets.dim() > 1 else None
    outside = targets[outside_classes(targets, classes, ignored)]
    if outside.numel():
        raise ValueError(
            f"{name} has label {int(outside[0])}, outside the model's {classes} outputs (classes "
            f"0 to {classes - 1}); {outside.numel()} labels are out of range"
        )


@dataclass(frozen=True)
class Unlearner:
    """Runs an unlearning method on requests.

    Attributes:
        method: the unlearner (e.g. ``FineTune()``, ``ExactRetraining(tda.MLP)``).
        mask: optional ``{name: bool tensor}``, ``True`` = may change; all other weights stay
            bitwise unchanged (a hard constraint the method's own mask is intersected with).
        audit_log: optional JSON-lines file each successful run is appended to.
        compute_metrics: measure UA / RA / TA / MIA after the run.
        compare_before: with ``compute_metrics``, measure them on the model handed in too, so
            the record shows what changed (``metrics_before``; about as long again as the
            metrics, untimed by ``timings["unlearn"]``).
    """

    method: UnlearningMethod
    mask: Mask | None = None
    audit_log: str | os.PathLike | None = None
    compute_metrics: bool = True
    compare_before: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.method, type):  # else it fails at the first call, far from here
            raise TypeError(
                f"method must be an unlearning method instance, e.g. {self.method.__name__}(), "
                f"not the class {self.method.__name__}"
            )

    def unlearn(
        self,
        model: nn.Module,
        train_data: Any,
        request: UnlearningRequest,
        *,
        test_data: Any | None = None,
    ) -> UnlearningResult:
        """Unlearn ``request``'s forget set from a copy of ``model``.

        Args:
            model: the trained model; never modified.
            train_data: the training set :math:`S` the request's indices refer to (``Examples``
                or anything :func:`tda.as_examples` reads).
            request: what to forget.
            test_data: held-out examples for TA and MIA-efficacy (optional).

        Raises:
            ValueError: the model, data or forget set do not fit the request or the method; a
                bad mask; training or test data the model cannot read (a forward pass on the
                first example) or, with ``compute_metrics``, whose targets are no classes of its
                outputs; with an audit log, a request the log shows would bring back forgotten
                examples. All found before the run: nothing is returned or logged and ``model``
                is untouched. Also found again when appending, under the log's lock, where
                another run appended what makes it one while this one ran: nothing is
                returned or logged.
            FloatingPointError: the unlearning loss or weights became NaN / infinite.
        """
        train = as_examples(train_data)
        test = as_examples(test_data) if test_data is not None else None
        model_before, data_before = model_fingerprint(model), train.fingerprint()
        self._refuse_before_the_run(model, request, (train, test), (model_before, data_before))
        mask = check_mask(model, self.mask) if self.mask is not None else None
        split = ForgetSplit.of(
            _on_model(model, train, "train_data"), request, train_fingerprint=data_before
        )
        warm_up_torch()
        start = time.perf_counter()
        unlearned = copy.deepcopy(model)
        if not request.is_empty:
            unlearned = self.method.unlearn(unlearned, split, seed=request.seed, mask=mask)
        timings = {"unlearn": time.perf_counter() - start}
        start = time.perf_counter()
        metrics = self._metrics(unlearned, split, test, request.seed)
        before = None
        if self.compute_metrics:
            timings["metrics"] = time.perf_counter() - start
            if self.compare_before:
                before = self._metrics(model, split, test, request.seed)  # read, not modified
        audit = self._audit(
            request, model_before, unlearned, data_before, (metrics, before), timings
        )
        result = UnlearningResult(model=unlearned, audit=audit)
        if self.audit_log is not None:
            # again under the log's lock: another run may have appended since the check above
            refusal = (
                f"audit log {self.audit_log} changed while this run ran, and no longer allows "
                "its result, which was not appended"
            )
            check = partial(check_record, audit, refusal=refusal)
            append_audit(audit, self.audit_log, check=check)
        return result

    def _refuse_before_the_run(self, model, request, data, fingerprints) -> None:
        """Every check that can fail without running the method, so that a failure costs no
        unlearning run (an exact retraining, say) and leaves no trace."""
        (train, test), (model_before, data_before) = data, fingerprints
        if test is not None and len(test) == 0:
            raise ValueError("test_data is empty; pass held-out examples or None")
        _check_request(request, self.method, model_before, train, data_before)
        if self.audit_log is not None:  # a damaged log or a broken chain, too
            check_history(request, model_before, check_audit_log(self.audit_log))
        for name, examples in (("train_data", train), ("test_data", test)):
            if examples is not None:
                _check_fits(model, examples, name, classes=self.compute_metrics)

    def _metrics(self, model, split: ForgetSplit, test_data, seed: int) -> dict[str, float]:
        if not self.compute_metrics:
            return {}
        test = _on_model(model, test_data, "test_data") if test_data is not None else None
        return unlearning_metrics(model, split.forget, split.retain, test, seed=seed)

    def _audit(self, request, model_before, unlearned, data_before, measured, timings):
        metrics, before = measured  # after and before the run
        return AuditRecord(
            request=request,
            method=qualified_name(type(self.method)),
            method_config=describe(self.method),
            mask=describe_mask(self.mask, unlearned),
            model_fingerprint_before=model_before,
            model_fingerprint_after=model_fingerprint(unlearned),
            data_fingerprint=data_before,
            metrics=metrics,
            metrics_before=before,
            timings=timings,
            no_op=request.is_empty,
            library_version=_library_version(),
            torch_version=torch.__version__,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            torch_threads=torch.get_num_threads(),
            device=str(next(unlearned.parameters()).device),
            run_id=new_run_id(),
        )
