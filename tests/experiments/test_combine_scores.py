"""experiments/combine_scores.py: attributors' training-point scores averaged at unit norm."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import unlearn
from experiments import combine_scores
from experiments.combine_scores import main, unit_norm_mean
from tda.device import OnDevice


def test_each_source_counts_alike_whatever_its_units():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    combined = unit_norm_mean({"a": 1000.0 * first, "b": second})
    expected = (first / np.linalg.norm(first) + second / np.linalg.norm(second)) / 2
    np.testing.assert_allclose(combined, expected, rtol=1e-12)
    np.testing.assert_allclose(
        unit_norm_mean({"a": first, "b": 3 * first}), first / np.linalg.norm(first)
    )
    with pytest.raises(ValueError, match="different shapes"):
        unit_norm_mean({"a": first, "b": second[:4]})


def _write(workspace, name, scores, **record):
    directory = workspace / "scores"
    directory.mkdir(exist_ok=True)
    np.save(directory / f"{name}.npy", scores)
    fields = {"train_fingerprint": "t", "query_fingerprint": "t", "architecture": "a"}
    (directory / f"{name}.json").write_text(json.dumps(fields | {"query_split": "train"} | record))


def test_files_are_combined_into_a_score_file_dmm_can_read(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    _write(tmp_path, "one", rng.normal(size=(4, 4)).astype(np.float32))
    _write(tmp_path, "two", rng.normal(size=(4, 4)).astype(np.float32))
    argv = ["combine_scores", str(tmp_path), "--files", "one", "two", "--output", "both"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    record = json.loads((tmp_path / "scores" / "both.json").read_text())
    assert record["sources"] == ["one", "two"] and record["query_split"] == "train"
    assert record["train_fingerprint"] == record["query_fingerprint"] == "t"
    assert np.load(tmp_path / "scores" / "both.npy").shape == (4, 4)
    _write(tmp_path, "other", np.ones((4, 4), np.float32), train_fingerprint="u")
    monkeypatch.setattr(sys, "argv", [*argv[:3], "one", "other", "--output", "bad"])
    with pytest.raises(ValueError, match="other and one differ in train_fingerprint"):
        main()


def test_dmm_trak_is_composed_with_the_given_overrides(tmp_path, monkeypatch):
    _write(tmp_path, "one", np.ones((4, 4), np.float32))
    seen = []

    def compose(overrides):
        seen.append(overrides)
        raise LookupError("composed")

    monkeypatch.setattr(combine_scores, "dmm_config", compose)
    argv = ["combine_scores", str(tmp_path), "--files", "one", "--dmm-trak", "3"]
    argv += ["--override", "experiment=mnist1d_cnn", "--override", "threads=2", "--output", "x"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(LookupError, match="composed"):
        main()
    assert seen == [
        ["experiment=mnist1d_cnn", "threads=2", "predictor=trak", "dmm.models=3",
         f"workspace={tmp_path}"]
    ]  # fmt: skip


def test_dmm_trak_trains_its_members_on_the_runs_device(tmp_path, monkeypatch):
    built = {}

    def trak_predictor(**kwargs):
        built.update(kwargs)
        return SimpleNamespace(trak=SimpleNamespace(score=lambda split: torch.zeros(240, 240)))

    monkeypatch.setattr(unlearn, "trak_predictor", trak_predictor)
    scores, _ = combine_scores._dmm_trak(tmp_path, 1, ["experiment=tiny", "device=cpu"])
    assert scores.shape == (240, 240) and built["models"] == 1
    factory = built["model_factory"]
    assert isinstance(factory, OnDevice) and factory.device == torch.device("cpu")
