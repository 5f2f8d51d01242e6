"""Content fingerprints: every state a model can hold is hashed, and changes change the hash."""

from __future__ import annotations

import torch
from torch import nn

from tda.checkpoints import load_checkpoint, save_checkpoint
from tda.data import Examples
from tda.fingerprint import array_fingerprint, model_fingerprint, tensor_fingerprint


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


def test_array_fingerprints_of_numpy_dtypes_are_those_recorded_by_earlier_versions() -> None:
    """Stores and records keep these fingerprints: a change would mark all of them stale."""
    inputs = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4
    targets = torch.tensor([0, 2])
    recorded = "54d023d962ab45a713fce95191026a9ccbd1e069d1893053ddd984ba273fb3c2"
    assert array_fingerprint(inputs, targets) == recorded
    assert array_fingerprint(inputs.numpy(), targets.numpy()) == recorded
    assert array_fingerprint(inputs.double()) == (
        "bb60ada922c24e767357026322927beb4a09ff97538ad9dbbf073d0ce6db6eb8"
    )


def test_bfloat16_arrays_are_fingerprinted_by_dtype_shape_and_values() -> None:
    inputs = (torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4).bfloat16()
    fingerprint = array_fingerprint(inputs)
    assert fingerprint == array_fingerprint(inputs.clone())
    assert fingerprint == array_fingerprint(inputs.t().contiguous().t())  # memory layout ignored
    assert fingerprint != array_fingerprint(inputs.float())
    assert fingerprint != array_fingerprint(inputs.half())  # the same 16-bit width
    assert fingerprint != array_fingerprint(inputs.reshape(3, 2))
    changed = inputs.clone()
    changed[1, 2] += 1
    assert fingerprint != array_fingerprint(changed)


def test_examples_of_bfloat16_inputs_have_a_fingerprint() -> None:
    inputs = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).bfloat16()
    examples = Examples(inputs, torch.tensor([0, 1, 2, 0]))
    assert examples.fingerprint() == Examples(inputs.clone(), examples.targets).fingerprint()
