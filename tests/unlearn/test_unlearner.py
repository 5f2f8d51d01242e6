from functools import partial

import pytest
import torch

from tda.fingerprint import model_fingerprint
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
    with pytest.raises(ValueError, match="targets different training data"):
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
