import copy
import re
from functools import partial

import pytest
import torch

from tda.data import Examples
from tda.fingerprint import model_fingerprint
from tda.models import build_model
from tests.unlearn.reference import FACTORY, TRAIN_CONFIG
from unlearn import (
    ExactRetraining,
    FineTune,
    ForgetSplit,
    GradientAscent,
    GradientDifference,
    LoopConfig,
    RandomLabels,
    Unlearner,
    UnlearningRequest,
    read_audit_log,
    unlearning_metrics,
)

QUICK = LoopConfig(epochs=2, batch_size=32)
METHODS = {
    "retrain": ExactRetraining(FACTORY, TRAIN_CONFIG, init_seed=0),
    "FT": FineTune(QUICK),
    "GA": GradientAscent(QUICK),
    "RL": RandomLabels(QUICK),
    "GradDiff": GradientDifference(QUICK),
}


def _request(model, indices=range(0, 300, 10), seed=0) -> UnlearningRequest:
    return UnlearningRequest(
        list(indices), train_size=300, seed=seed, model_fingerprint=model_fingerprint(model)
    )


@pytest.mark.parametrize("name", list(METHODS))
def test_the_callers_model_is_never_mutated_and_runs_repeat_bitwise(mnist, trained, name):
    before, request = model_fingerprint(trained), _request(trained, seed=3)
    unlearner = Unlearner(METHODS[name])
    first = unlearner.unlearn(trained, mnist.train, request, test_data=mnist.test)
    second = unlearner.unlearn(trained, mnist.train, request, test_data=mnist.test)
    assert model_fingerprint(trained) == before == first.audit.model_fingerprint_before
    assert model_fingerprint(first.model) == model_fingerprint(second.model) != before
    assert first.audit.model_fingerprint_after == model_fingerprint(first.model)
    assert set(first.metrics) == {"UA", "RA", "TA", "MIA"}
    assert first.timings["unlearn"] > 0 and first.audit.request_id == request.request_id


def test_an_empty_forget_set_is_a_no_op_where_the_method_allows_it(mnist, trained, tmp_path):
    request = _request(trained, indices=[])
    result = Unlearner(FineTune(QUICK)).unlearn(trained, mnist.train, request, test_data=mnist.test)
    assert result.model is not trained
    assert result.audit.model_fingerprint_after == model_fingerprint(trained)
    assert result.audit.no_op and set(result.metrics) == {"RA", "TA"}
    log = tmp_path / "audit.jsonl"
    for name in ("GA", "RL", "GradDiff"):
        with pytest.raises(ValueError, match="needs forget examples but request req-"):
            Unlearner(METHODS[name], audit_log=log).unlearn(trained, mnist.train, request)
    assert not log.exists()


def test_bad_requests_leave_the_model_and_the_audit_log_untouched(mnist, trained, tmp_path):
    log = tmp_path / "audit.jsonl"
    unlearner = Unlearner(FineTune(QUICK), audit_log=log)
    unlearner.unlearn(trained, mnist.train, _request(trained))
    log_bytes, before = log.read_bytes(), model_fingerprint(trained)
    other_model = UnlearningRequest([1], train_size=300, model_fingerprint="0" * 64)
    with pytest.raises(ValueError, match="targets model 000000000000... but was given model"):
        unlearner.unlearn(trained, mnist.train, other_model)
    with pytest.raises(ValueError, match="training set of 500 examples but 300 were given"):
        unlearner.unlearn(trained, mnist.train, UnlearningRequest([1], train_size=500))
    with pytest.raises(ValueError, match="targets training data ffffffffffff... but was given"):
        request = UnlearningRequest([1], train_size=300, data_fingerprint="f" * 64)
        unlearner.unlearn(trained, mnist.train, request)
    with pytest.raises(ValueError, match="parameters are torch.float32 but the inputs are"):
        unlearner.unlearn(trained, mnist.train.to(dtype=torch.float64), _request(trained))
    never = Unlearner(GradientAscent(LoopConfig(3, 32, partial(torch.optim.SGD, lr=1e20))))
    with pytest.raises(ValueError, match="test_data is empty"):  # before any unlearning
        never.unlearn(trained, mnist.train, _request(trained), test_data=mnist.test.subset([]))
    diverging = Unlearner(
        GradientAscent(LoopConfig(3, 32, partial(torch.optim.SGD, lr=1e20))), audit_log=log
    )
    with pytest.raises(FloatingPointError, match="became"):
        diverging.unlearn(trained, mnist.train, _request(trained))
    assert log.read_bytes() == log_bytes and model_fingerprint(trained) == before


def test_a_mask_given_to_the_unlearner_is_a_hard_constraint(mnist, trained):
    frozen = {"0.weight": torch.zeros_like(trained.get_parameter("0.weight"), dtype=torch.bool)}
    optimizer = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.1)
    unlearner = Unlearner(RandomLabels(LoopConfig(2, 32, optimizer)), mask=frozen)
    result = unlearner.unlearn(trained, mnist.train, _request(trained))
    first_layer = trained.get_parameter("0.weight").detach()
    assert torch.equal(
        result.model.get_parameter("0.weight").view(torch.int32), first_layer.view(torch.int32)
    )
    assert not torch.equal(
        result.model.get_parameter("2.weight"), trained.get_parameter("2.weight")
    )
    assert result.audit.mask["trainable"] == 0 and result.audit.mask["total"] == first_layer.numel()


def test_sequential_requests_chain_fingerprints_and_never_retain_earlier_forgets(
    mnist, trained, tmp_path
):
    log = tmp_path / "audit.jsonl"
    unlearner = Unlearner(FineTune(QUICK), audit_log=log)
    first = unlearner.unlearn(trained, mnist.train, _request(trained, indices=range(10)))
    second_request = first.next_request([20, 21, 22], seed=5)
    second = unlearner.unlearn(first.model, mnist.train, second_request)
    assert second.audit.model_fingerprint_before == first.audit.model_fingerprint_after
    assert second_request.previously_forgotten == tuple(range(10))
    retained = set(ForgetSplit.of(mnist.train, second_request).retain_indices.tolist())
    assert retained.isdisjoint(set(range(10)) | {20, 21, 22}) and len(retained) == 287
    assert [r.request_id for r in read_audit_log(log)] == [
        first.audit.request_id,
        second.audit.request_id,
    ]
    with pytest.raises(ValueError, match="refusing to unlearn from a different model"):
        unlearner.unlearn(
            trained, mnist.train, second_request
        )  # the original, not the first result


def test_a_hand_built_follow_up_that_would_retain_earlier_forgets_is_refused(
    mnist, trained, tmp_path
):
    """A follow-up built by hand (not by next_request) on an unlearned model put the first
    request's examples back in the retain set: fine-tuning relearned them."""
    log = tmp_path / "audit.jsonl"
    unlearner = Unlearner(FineTune(QUICK), audit_log=log)
    first = unlearner.unlearn(trained, mnist.train, _request(trained, indices=range(10)))
    logged = log.read_bytes()
    by_hand = _request(first.model, indices=[20, 21])
    with pytest.raises(ValueError, match="previously_forgotten lacks 10 of them .*next_request"):
        unlearner.unlearn(first.model, mnist.train, by_hand)
    assert log.read_bytes() == logged
    chained = unlearner.unlearn(first.model, mnist.train, first.next_request([20, 21]))
    assert chained.audit.request.previously_forgotten == tuple(range(10))
    # without an audit log there is no history to check
    Unlearner(FineTune(QUICK)).unlearn(first.model, mnist.train, by_hand)


def test_a_damaged_audit_log_is_refused_before_the_run(mnist, trained, tmp_path):
    """The damage was found only when appending, after the run: its result was thrown away."""

    class NeverRuns(FineTune):
        def unlearn(self, *args, **kwargs):
            raise AssertionError("the method ran before the log was checked")

    log = tmp_path / "audit.jsonl"
    log.write_text('{"partial": ')
    with pytest.raises(ValueError, match="does not end with a newline"):
        Unlearner(NeverRuns(QUICK), audit_log=log).unlearn(trained, mnist.train, _request(trained))


def test_the_audit_record_names_the_threads_and_device_of_the_run(mnist, trained):
    result = Unlearner(FineTune(QUICK)).unlearn(trained, mnist.train, _request(trained))
    assert result.audit.torch_threads == torch.get_num_threads()
    assert result.audit.device == "cpu"


def test_a_method_class_instead_of_an_instance_is_refused_at_once():
    with pytest.raises(TypeError, match=r"e.g. FineTune\(\), not the class FineTune"):
        Unlearner(FineTune)


def test_the_record_shows_the_metrics_before_and_after(mnist, trained):
    """The record had only the after-metrics: UA 20 read as forgetting when the original model
    already had it."""
    request = _request(trained)
    result = Unlearner(FineTune(QUICK)).unlearn(trained, mnist.train, request, test_data=mnist.test)
    split = ForgetSplit.of(mnist.train, request)
    expected = unlearning_metrics(trained, split.forget, split.retain, mnist.test, seed=0)
    assert result.metrics_before == expected and result.metrics != expected
    quiet = Unlearner(FineTune(QUICK), compare_before=False).unlearn(
        trained, mnist.train, request, test_data=mnist.test
    )
    assert quiet.metrics_before is None and quiet.metrics == result.metrics


def test_a_request_for_other_training_data_names_both_fingerprints_and_the_likely_causes(
    mnist, trained
):
    """The message named neither fingerprint nor what could differ."""
    request = UnlearningRequest([1], train_size=300, data_fingerprint=mnist.train.fingerprint())
    shuffled = mnist.train.subset(torch.randperm(300, generator=torch.Generator().manual_seed(0)))
    expected = (
        f"targets training data {mnist.train.fingerprint()[:12]}... but was given data "
        f"{shuffled.fingerprint()[:12]}...: another split, the same examples in another order, "
        "or other values or dtypes"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        Unlearner(FineTune(QUICK)).unlearn(trained, shuffled, request)


def test_a_request_on_a_model_already_unlearned_from_must_forget_what_was_forgotten_from_it(
    mnist, trained, tmp_path
):
    """A request on the model an earlier request started from was accepted: the new model, made
    from the original, still held the examples the platform had already erased."""
    log = tmp_path / "audit.jsonl"
    unlearner = Unlearner(FineTune(QUICK), audit_log=log, compute_metrics=False)
    first = unlearner.unlearn(trained, mnist.train, _request(trained, indices=[1, 2]))
    logged, before = log.read_bytes(), model_fingerprint(trained)
    for indices in ([3], [], [1, 3]):
        fork = _request(trained, indices=indices)
        with pytest.raises(
            ValueError,
            match=(
                f"the audit log shows request {first.audit.request_id} already unlearned from "
                r"\(from it or a model made from it\); its forget_indices lack \d of the examples "
                r"forgotten from it \(e.g. \[(1, )?2\]\).*result.next_request\(...\)\), or add "
                "them to forget_indices"
            ),
        ):
            unlearner.unlearn(trained, mnist.train, fork)
    assert log.read_bytes() == logged and model_fingerprint(trained) == before
    again = unlearner.unlearn(trained, mnist.train, first.audit.request)  # the same request
    assert again.audit.model_fingerprint_after == first.audit.model_fingerprint_after
    more = unlearner.unlearn(trained, mnist.train, _request(trained, indices=[1, 2, 3]))
    second = unlearner.unlearn(first.model, mnist.train, first.next_request([5]))
    with pytest.raises(ValueError, match=f"shows request {second.audit.request_id} already"):
        unlearner.unlearn(first.model, mnist.train, first.next_request([6]))
    with pytest.raises(ValueError, match=f"shows requests {first.audit.request_id}, "):
        unlearner.unlearn(trained, mnist.train, _request(trained, indices=[9]))
    assert more.audit.request.forget_indices == (1, 2, 3)
    # a model made from the first result forgot 5 too: a new fork of the original must forget it
    with pytest.raises(ValueError, match=rf"{second.audit.request_id}.* lack 1 .*\(e.g. \[5\]\)"):
        unlearner.unlearn(trained, mnist.train, _request(trained, indices=[1, 2, 3]))
    unlearner.unlearn(trained, mnist.train, _request(trained, indices=[1, 2, 3, 5]))
    # without an audit log there is no history to check
    Unlearner(FineTune(QUICK)).unlearn(trained, mnist.train, _request(trained, indices=[3]))


def test_a_request_a_parallel_run_made_conflicting_is_refused_when_appending(
    mnist, trained, tmp_path
):
    """Two requests on one model run at once both passed the history check before either ran,
    and both were appended: the log held a fork the check refuses when they run in turn."""
    log = tmp_path / "audit.jsonl"
    meanwhile = Unlearner(FineTune(QUICK), audit_log=log, compute_metrics=False)
    parallel, logged = [], []

    class AnotherRunFinishesMeanwhile(FineTune):
        def unlearn(self, *args, **kwargs):  # after this run's check, before its append
            parallel.append(meanwhile.unlearn(trained, mnist.train, _request(trained, [1, 2])))
            logged.append(log.read_bytes())
            return super().unlearn(*args, **kwargs)

    unlearner = Unlearner(AnotherRunFinishesMeanwhile(QUICK), audit_log=log, compute_metrics=False)
    with pytest.raises(
        ValueError,
        match=(
            rf"audit log {re.escape(str(log))} changed while this run ran, and no longer allows "
            r"its result, which was not appended: request .* the audit log shows request "
            rf"{_request(trained, [1, 2]).request_id} already unlearned from .* lack 2 of"
        ),
    ):
        unlearner.unlearn(trained, mnist.train, _request(trained, [3]))
    assert log.read_bytes() == logged[0]
    assert read_audit_log(log) == [parallel[0].audit]
    # a request the parallel run leaves allowed is appended after it, as when run in turn
    allowed = unlearner.unlearn(trained, mnist.train, _request(trained, [1, 2, 3]))
    assert read_audit_log(log) == [parallel[0].audit, parallel[1].audit, allowed.audit]


class _NeverRuns(FineTune):
    def unlearn(self, *args, **kwargs):
        raise AssertionError("the method ran before the data was checked")


def test_data_the_model_cannot_read_is_refused_before_the_run(mnist, trained, tmp_path):
    """Test inputs of the wrong width or labels past the model's outputs were found only by the
    metrics, after the (possibly long) run, as torch errors that did not name test_data."""
    log, before = tmp_path / "audit.jsonl", model_fingerprint(trained)
    unlearner = Unlearner(_NeverRuns(QUICK), audit_log=log)
    train, test = mnist.train, mnist.test
    for train_data, test_data, message in (
        (
            train,
            (test.inputs[:, :30], test.targets),
            r"test_data does not fit the model: the "
            r"forward pass on its first example \(inputs of shape \[30\]\) failed: mat1 and mat2",
        ),
        (
            train,
            (test.inputs, test.targets + 10),
            r"test_data has label 1\d, outside the model's "
            r"10 outputs \(classes 0 to 9\); 100 labels are out of range",
        ),
        (
            train,
            test.to(dtype=torch.float64),
            "test_data: the model's parameters are torch.float32",
        ),
        (
            train,
            Examples(test.inputs, test.inputs),  # a regression's targets
            "test_data has torch.float32 targets of shape "
            r"\[100, 40\], but the metrics read class indices of shape \[n\]",
        ),
        ((train.inputs[:, :30], train.targets), test, "train_data does not fit the model"),
        ((train.inputs, train.targets - 1), None, "train_data has label -1, outside"),
    ):
        with pytest.raises(ValueError, match=message):
            unlearner.unlearn(trained, train_data, _request(trained), test_data=test_data)
    assert not log.exists() and model_fingerprint(trained) == before
    quiet = Unlearner(FineTune(QUICK), compute_metrics=False)  # targets not read as classes
    result = quiet.unlearn(
        trained, mnist.train, _request(trained), test_data=(test.inputs, -test.targets)
    )
    assert result.metrics == {}


def test_checking_the_data_leaves_the_callers_model_and_the_result_as_they_were(mnist):
    """The check runs the caller's model: a normalisation or dropout layer in training mode
    must come back in it, with its statistics, and the result must not depend on the check."""

    def with_normalisation_and_dropout():
        return torch.nn.Sequential(
            torch.nn.Linear(40, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(16, 10),
        )

    model = build_model(with_normalisation_and_dropout, 0).train()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    unlearner = Unlearner(FineTune(QUICK))
    checked = unlearner.unlearn(model, mnist.train, _request(model), test_data=mnist.test)
    assert all(module.training for module in model.modules())
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())
    unchecked = Unlearner(FineTune(QUICK), compute_metrics=False)
    alone = unchecked.unlearn(model, mnist.train, _request(model))
    assert checked.audit.model_fingerprint_after == alone.audit.model_fingerprint_after


def test_parameters_frozen_by_requires_grad_are_in_the_audit(mnist, trained):
    """With no mask the audit said mask None, though only the unfrozen layers could change."""
    unlearner = Unlearner(FineTune(QUICK), compute_metrics=False)
    assert unlearner.unlearn(trained, mnist.train, _request(trained)).audit.mask is None
    partly = copy.deepcopy(trained)
    names = [name for name, _ in partly.named_parameters()]
    for parameter in list(partly.parameters())[:2]:
        parameter.requires_grad_(False)
    result = unlearner.unlearn(partly, mnist.train, _request(partly))
    frozen = dict(partly.named_parameters())
    assert result.audit.mask["requires_grad_false"] == names[:2]
    assert result.audit.mask["total"] == sum(p.numel() for p in frozen.values())
    assert result.audit.mask["trainable"] == sum(frozen[name].numel() for name in names[2:])
    for name in names[:2]:  # and they did not change
        assert torch.equal(dict(result.model.named_parameters())[name], frozen[name])
