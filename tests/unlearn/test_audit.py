import copy
import dataclasses
import json

import pytest
import torch

import unlearn.result
from tda.fingerprint import model_fingerprint
from tda.models import build_model
from tests.conftest import TiedLayers
from tests.unlearn.reference import FACTORY
from unlearn import (
    AuditRecord,
    FineTune,
    LoopConfig,
    Unlearner,
    UnlearningRequest,
    UnlearningResult,
    append_audit,
    read_audit_log,
)
from unlearn.result import model_file


@pytest.fixture
def result(mnist, trained) -> UnlearningResult:
    request = UnlearningRequest(
        [3, 1, 4, 15], train_size=300, seed=9, model_fingerprint=model_fingerprint(trained)
    )
    unlearner = Unlearner(FineTune(LoopConfig(epochs=1, batch_size=64)))
    return unlearner.unlearn(trained, mnist.train, request, test_data=mnist.test)


def test_the_audit_record_round_trips_through_json_and_says_what_ran(result):
    record = result.audit
    restored = AuditRecord.from_json(json.dumps(json.loads(record.to_json())))
    assert restored == record
    content = json.loads(record.to_json())
    assert content["request_id"] == record.request_id and content["seed"] == 9
    assert content["request"]["forget_indices"] == [1, 3, 4, 15]
    assert content["method"] == "unlearn.methods.fine_tune.FineTune"
    assert content["method_config"]["loop"]["optimizer"] == {
        "partial": "torch.optim.sgd.SGD",
        "args": [],
        "kwargs": {"lr": 0.01, "momentum": 0.9},
    }
    assert content["library_version"] and content["timestamp"].endswith("+00:00")
    with pytest.raises(ValueError, match="disagree"):
        AuditRecord.from_dict({**content, "seed": 10})
    with pytest.raises(ValueError, match="fields"):
        AuditRecord.from_dict({**content, "extra": 1})


def test_a_saved_result_loads_back_and_checks_its_fingerprint(result, tmp_path):
    result.save(tmp_path / "run")
    loaded = UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))
    assert loaded.audit == result.audit
    assert model_fingerprint(loaded.model) == model_fingerprint(result.model)
    assert not loaded.model.training  # in eval mode, as a fresh result's model
    tampered = json.loads((tmp_path / "run" / "audit.json").read_text())
    tampered["model_fingerprint_after"] = "0" * 64
    (tmp_path / "run" / "audit.json").write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match="was edited after it was saved"):
        UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))
    del tampered["record_sha256"]  # the checksum removed from an edited record
    (tmp_path / "run" / "audit.json").write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match="has no record_sha256, which every record with a run_id"):
        UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))
    del tampered["run_id"]  # as saved before records had a checksum (or a run_id)
    (tmp_path / "run" / "audit.json").write_text(json.dumps(tampered))
    with pytest.raises(ValueError, match="do not match the audit's fingerprint"):
        UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))


def test_saving_into_a_directory_of_another_result_is_refused(result, tmp_path):
    """Saving FT's result into SalUn's directory silently replaced it."""
    result.save(tmp_path / "run")
    result.save(tmp_path / "run")  # the same result again: fine
    later = dataclasses.replace(result.audit, timestamp="2000-01-01T00:00:00+00:00")
    other = dataclasses.replace(result, audit=later)
    with pytest.raises(FileExistsError, match="holds the result of another run"):
        other.save(tmp_path / "run")
    other.save(tmp_path / "run", overwrite=True)
    loaded = UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))
    assert loaded.audit.timestamp == "2000-01-01T00:00:00+00:00"


def _another_result(result: UnlearningResult) -> UnlearningResult:
    """``result`` with other weights (and an audit that says so)."""
    model = copy.deepcopy(result.model)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    audit = dataclasses.replace(result.audit, model_fingerprint_after=model_fingerprint(model))
    return UnlearningResult(model=model, audit=audit)


def test_a_save_killed_before_its_record_leaves_the_old_result(result, tmp_path, monkeypatch):
    """Overwriting replaced the weights, then the record: a kill in between lost both."""
    result.save(tmp_path / "run")
    other = _another_result(result)
    real_write = unlearn.result.write_bytes_atomic

    def killed_at_the_record(path, data, **kwargs):
        if path.name == "audit.json":
            raise KeyboardInterrupt
        return real_write(path, data, **kwargs)

    monkeypatch.setattr(unlearn.result, "write_bytes_atomic", killed_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "run", overwrite=True)
    monkeypatch.undo()
    loaded = UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))
    assert loaded.audit == result.audit
    assert model_fingerprint(loaded.model) == result.audit.model_fingerprint_after
    other.save(tmp_path / "run", overwrite=True)  # finished: the old weights are removed
    assert len(list((tmp_path / "run").glob("*.safetensors"))) == 1
    loaded = UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))
    assert model_fingerprint(loaded.model) == other.audit.model_fingerprint_after


def test_a_result_saved_with_the_old_weights_name_still_loads(result, tmp_path):
    result.save(tmp_path / "run")
    (weights,) = (tmp_path / "run").glob("*.safetensors")
    weights.rename(tmp_path / "run" / "model.safetensors")  # the name before fingerprints
    loaded = UnlearningResult.load(tmp_path / "run", build_model(FACTORY, 1))
    assert model_fingerprint(loaded.model) == result.audit.model_fingerprint_after
    _another_result(result).save(tmp_path / "run", overwrite=True)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_saving_touches_no_weights_but_those_of_the_result_it_replaces(result, tmp_path):
    """Saving removed every model*.safetensors in the directory, a model's own weights too."""
    run = tmp_path / "run"
    run.mkdir()
    others = ["model.safetensors", "model-00001-of-00002.safetensors", "config.json"]
    for name in others:
        (run / name).write_bytes(b"someone else's")
    result.save(run)
    replacement = _another_result(result)
    replacement.save(run, overwrite=True)
    names = sorted(path.name for path in run.iterdir())
    assert names == sorted(
        [*others, "audit.json", model_file(replacement.audit.model_fingerprint_after)]
    )


def test_a_directory_without_a_saved_result_is_named(result, tmp_path):
    with pytest.raises(ValueError, match="holds no saved result"):
        UnlearningResult.load(tmp_path, build_model(FACTORY, 1))
    (tmp_path / "audit.json").write_text("not json")
    with pytest.raises(ValueError, match="audit.json is not the audit record of a saved result"):
        UnlearningResult.load(tmp_path, build_model(FACTORY, 1))
    with pytest.raises(FileExistsError, match="is not the audit record .* pass overwrite=True"):
        result.save(tmp_path)
    result.save(tmp_path, overwrite=True)
    assert UnlearningResult.load(tmp_path, build_model(FACTORY, 1)).audit == result.audit


def _state_bits(model) -> dict:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_a_refused_saved_result_leaves_the_model_as_it_was(result, tmp_path):
    result.save(tmp_path / "run")
    other_dtype = build_model(FACTORY, 1).double()
    before = _state_bits(other_dtype)
    with pytest.raises(
        ValueError, match="the model file in .* does not fit this model: 0.bias: file has"
    ):
        UnlearningResult.load(tmp_path / "run", other_dtype)
    tampered = json.loads((tmp_path / "run" / "audit.json").read_text())
    tampered["model_fingerprint_after"] = "0" * 64
    del tampered["record_sha256"], tampered["run_id"]  # as saved before records had them
    (tmp_path / "run" / "audit.json").write_text(json.dumps(tampered))
    same_layout = build_model(FACTORY, 1)
    before_same = _state_bits(same_layout)
    with pytest.raises(ValueError, match="do not match the audit's fingerprint"):
        UnlearningResult.load(tmp_path / "run", same_layout)
    for model, expected in ((other_dtype, before), (same_layout, before_same)):
        for name, tensor in model.state_dict().items():
            assert torch.equal(tensor, expected[name]), name


def test_a_result_of_a_model_with_tied_weights_saves_and_loads_back(tiny_tied, tiny_data, tmp_path):
    unlearner = Unlearner(FineTune(LoopConfig(epochs=1, batch_size=4)), compute_metrics=False)
    request = UnlearningRequest([2, 5], train_size=len(tiny_data))
    result = unlearner.unlearn(tiny_tied, tiny_data, request)
    result.save(tmp_path / "run")  # safetensors refused the one weight under two names
    loaded = UnlearningResult.load(tmp_path / "run", build_model(TiedLayers, 1, torch.float64))
    assert loaded.model.last.weight is loaded.model.middle.weight
    assert torch.equal(loaded.model.middle.weight, result.model.middle.weight)
    assert model_fingerprint(loaded.model) == result.audit.model_fingerprint_after


def test_appending_keeps_earlier_lines_and_refuses_a_damaged_log(result, tmp_path):
    log = tmp_path / "logs" / "audit.jsonl"
    result.append_audit(log)
    append_audit(result.audit, log)
    assert read_audit_log(log) == [result.audit, result.audit]
    assert log.read_text().count("\n") == 2
    damaged = log.read_bytes()[:-10]
    log.write_bytes(damaged)
    with pytest.raises(ValueError, match="does not end with a newline.*restore the log"):
        result.append_audit(log)
    assert log.read_bytes() == damaged


def test_appending_by_hand_follows_the_lineage_rule_too(result, mnist, trained, tmp_path):
    """Only Unlearner(audit_log=...) checked the log's lineage: two results from one model,
    appended by hand, logged a request that put the first one's forgotten examples back."""
    log = tmp_path / "audit.jsonl"
    result.append_audit(log)
    other = UnlearningRequest([2], train_size=300, seed=9)  # lacks the first one's [3, 1, 4, 15]
    unlearner = Unlearner(FineTune(LoopConfig(epochs=1, batch_size=64)))
    conflicting = unlearner.unlearn(trained, mnist.train, other)
    before = log.read_bytes()
    with pytest.raises(ValueError, match=r"does not allow this record: .*lack 4 of the examples"):
        conflicting.append_audit(log)
    assert log.read_bytes() == before
    carrying = UnlearningRequest([3, 1, 4, 15, 2], train_size=300, seed=9)
    unlearner.unlearn(trained, mnist.train, carrying).append_audit(log)
    assert len(read_audit_log(log)) == 2


def test_a_blank_line_in_the_log_is_skipped_by_the_writer_as_by_the_reader(result, tmp_path):
    """The reader skipped a blank line, but the writer chained the next record to it: every
    later read (and every later run on the log) failed the chain check."""
    log = tmp_path / "audit.jsonl"
    append_audit(result.audit, log)
    with open(log, "ab") as file:
        file.write(b"\n  \n")  # a stray newline (an editor, `echo >> log`), one of spaces
    assert read_audit_log(log) == [result.audit]
    append_audit(result.audit, log)
    append_audit(result.audit, log)
    assert read_audit_log(log) == [result.audit] * 3
    assert log.read_bytes().splitlines()[1:3] == [b"", b"  "]  # earlier lines kept as they were


def test_a_record_written_before_threads_and_device_were_kept_still_reads(result, tmp_path):
    content = result.audit.to_dict()
    del content["torch_threads"], content["device"]
    old = AuditRecord.from_dict(content)
    assert old.torch_threads is None and old.device is None
    with pytest.raises(ValueError, match="differ from"):
        AuditRecord.from_dict({**content, "unexpected": 1})


def test_the_log_finds_a_line_edited_removed_or_moved(result, tmp_path):
    log = tmp_path / "audit.jsonl"
    for _ in range(3):
        append_audit(result.audit, log)
    lines = log.read_text().splitlines(keepends=True)
    edited = lines[1].replace('"no_op": false', '"no_op": true')
    assert edited != lines[1]
    for damaged, line in (
        ([lines[0], edited, lines[2]], 2),
        ([lines[0], lines[2]], 2),  # the middle line removed
        ([lines[1], lines[0], lines[2]], 1),
    ):
        log.write_text("".join(damaged))
        with pytest.raises(ValueError, match=f"line {line}: its chain_sha256 does not match"):
            read_audit_log(log)


def _pre_chain_log(result, tmp_path):
    """A log of one line as written before the chain (no run_id either), then one appended."""
    log = tmp_path / "audit.jsonl"
    content = result.audit.to_dict()
    del content["run_id"]
    log.write_text(json.dumps(content) + "\n")
    append_audit(result.audit, log)
    return log


def test_a_log_written_before_the_chain_still_reads_and_is_appended_to(result, tmp_path):
    old, new = read_audit_log(_pre_chain_log(result, tmp_path))
    assert old.run_id is None and new == result.audit


def test_each_run_of_a_request_has_its_own_run_id(mnist, trained, result):
    unlearner = Unlearner(FineTune(LoopConfig(epochs=1, batch_size=64)), compute_metrics=False)
    again = unlearner.unlearn(trained, mnist.train, result.audit.request)
    assert again.audit.request_id == result.audit.request_id
    assert again.audit.run_id != result.audit.run_id and len(again.audit.run_id) == 32


def test_a_bad_line_of_the_log_is_named(result, tmp_path):
    log = tmp_path / "audit.jsonl"
    append_audit(result.audit, log)
    log.write_text(log.read_text() + "{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        read_audit_log(log)


def _unchained(line: str, **changes) -> str:
    content = json.loads(line)
    del content["chain_sha256"]
    return json.dumps({**content, **changes}) + "\n"


def test_a_line_whose_chain_was_removed_is_refused(result, mnist, trained, tmp_path):
    """Deleting an edited line's chain_sha256 let the edit pass as a line written before the
    chain, and the next run chained onto it."""
    log = tmp_path / "audit.jsonl"
    for _ in range(3):
        append_audit(result.audit, log)
    lines = log.read_text().splitlines(keepends=True)
    metrics = {**result.audit.metrics, "UA": 100.0}
    unlearner = Unlearner(FineTune(LoopConfig(epochs=1)), audit_log=log, compute_metrics=False)
    for damaged, line, why in (
        ([lines[0], lines[1], _unchained(lines[2], metrics=metrics)], 3, "but follows a chained"),
        ([lines[0], _unchained(lines[1], no_op=True), lines[2]], 2, "but follows a chained"),
        ([_unchained(lines[0], metrics=metrics), lines[1], lines[2]], 1, "but has a run_id"),
        ([_unchained(line, metrics=metrics) for line in lines], 1, "but has a run_id"),
    ):
        log.write_text("".join(damaged))
        with pytest.raises(ValueError, match=f"line {line}: it has no chain_sha256 {why}"):
            read_audit_log(log)
        with pytest.raises(ValueError, match=f"line {line}: it has no chain_sha256 {why}"):
            unlearner.unlearn(trained, mnist.train, result.audit.request)  # nothing appended
        assert log.read_text() == "".join(damaged)


def test_a_line_written_before_the_chain_is_covered_by_the_next_chained_line(result, tmp_path):
    log = _pre_chain_log(result, tmp_path)
    old, chained = log.read_text().splitlines(keepends=True)
    log.write_text(old.replace('"no_op": false', '"no_op": true') + chained)
    with pytest.raises(
        ValueError, match="line 2: its chain_sha256 does not match .* a line before it was edited"
    ):
        read_audit_log(log)
