"""Content fingerprints: every state a model can hold is hashed, and changes change the hash."""

from __future__ import annotations

import torch
from torch import nn

from tda.checkpoints import load_checkpoint, save_checkpoint
from tda.fingerprint import model_fingerprint, tensor_fingerprint


def _batch_norm_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()


def test_model_fingerprint_hashes_zero_dim_buffers_such_as_batch_norm_counters() -> None:
    model = _batch_norm_model()
    before = model_fingerprint(model)
    model[1].num_batches_tracked += 1  # a 0-dim int64 buffer
    assert model_fingerprint(model) != before
    model[1].num_batches_tracked -= 1
    assert model_fingerprint(model) == before


def test_zero_dim_tensors_are_hashed_by_value_and_shape() -> None:
    scalar = torch.tensor(2.5, dtype=torch.float64)
    same, other = torch.tensor(2.5, dtype=torch.float64), torch.tensor(3.5, dtype=torch.float64)
    assert tensor_fingerprint({"x": scalar}) == tensor_fingerprint({"x": same})
    assert tensor_fingerprint({"x": scalar}) != tensor_fingerprint({"x": other})
    # the shape is hashed too: a 0-dim tensor differs from a one-element vector
    assert tensor_fingerprint({"x": scalar}) != tensor_fingerprint({"x": scalar.reshape(1)})


def test_a_batch_norm_model_checkpoint_round_trips(tmp_path) -> None:
    model = _batch_norm_model()
    model.train()
    model(torch.randn(8, 3, dtype=torch.float64))  # updates running stats and the counter
    checkpoint = save_checkpoint(
        tmp_path,
        "epoch-0001",
        model,
        step=1,
        epoch=1,
        learning_rate=0.1,
        segment_steps=1,
        segment_learning_rate=0.1,
    )
    restored = load_checkpoint(
        checkpoint, nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    )
    assert model_fingerprint(restored) == model_fingerprint(model) == checkpoint.fingerprint
    assert int(restored[1].num_batches_tracked) == 1
