"""The Projector contract, shared by every implementation: seeds, configs, validation, dtypes."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from tda.projection import (
    DenseProjector,
    IdentityProjector,
    Projector,
    SparseProjector,
    derive_seed,
)
from tda.projection.base import rademacher

PROJECTORS = [
    IdentityProjector(seed=3),
    DenseProjector(dim=16, seed=3),
    DenseProjector(dim=16, kind="gaussian", seed=3, block_rows=5, max_cache_bytes=0),
    SparseProjector(dim=16, nonzeros=3, seed=3),
]
IDS = ["identity", "dense-rademacher", "dense-gaussian-streaming", "sparse"]


def _features(batch: int = 6, p: int = 23, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(batch, p, generator=generator, dtype=torch.float64).to(dtype)


def test_derive_seed_is_deterministic_in_range_and_distinct():
    seeds = [derive_seed(7, checkpoint) for checkpoint in range(200)]
    assert seeds == [derive_seed(7, checkpoint) for checkpoint in range(200)]
    assert all(isinstance(seed, int) and 0 <= seed < 2**63 for seed in seeds)
    assert len(set(seeds)) == len(seeds)
    assert derive_seed(7, "epoch_3") != derive_seed(8, "epoch_3")
    # ids are hashed through str: an id that went through JSON keeps its seed.
    assert derive_seed(7, 3) == derive_seed(7, "3")
    torch.Generator().manual_seed(max(seeds))  # accepted by torch


def test_derive_seed_is_stable_across_processes():
    # Python's own hash() of a str changes with PYTHONHASHSEED; derive_seed must not.
    code = (
        "from tda.projection import derive_seed; "
        "print(derive_seed(11, 'ckpt-4'), derive_seed(0, 9))"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": root}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        assert result.stdout.split() == [str(derive_seed(11, "ckpt-4")), str(derive_seed(0, 9))]


@pytest.mark.parametrize("bad", [1.5, "3", None, True])
def test_derive_seed_rejects_bad_base_seed(bad):
    with pytest.raises(ValueError, match="seed must be an int"):
        derive_seed(bad, 0)


@pytest.mark.parametrize("bad", [1.5, None, True, (1, 2)])
def test_derive_seed_rejects_bad_checkpoint_id(bad):
    with pytest.raises(ValueError, match="checkpoint_id must be a str or an int"):
        derive_seed(0, bad)


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
def test_conforms_to_protocol_and_config_round_trips(projector):
    assert isinstance(projector, Projector)
    config = projector.config()
    assert config["class"] == type(projector).__name__
    assert config["seed"] == 3
    settings = json.loads(json.dumps(config))
    rebuilt = type(projector)(**{key: value for key, value in settings.items() if key != "class"})
    assert rebuilt.config() == config  # speed knobs such as the cache budget are not config
    x = _features()  # the rebuilt one may cache where the original streamed: same matrix
    torch.testing.assert_close(rebuilt.project(x), projector.project(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
def test_with_seed_changes_only_the_seed(projector):
    other = projector.with_seed(4)
    assert type(other) is type(projector)
    assert other.seed == 4 and projector.seed == 3
    assert {**other.config(), "seed": 3} == projector.config()
    assert other.with_seed(3) == projector
    x = _features()
    assert torch.equal(other.with_seed(3).project(x), projector.project(x))
    if not isinstance(projector, IdentityProjector):
        assert not torch.allclose(other.project(x), projector.project(x))


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
def test_same_seed_is_bitwise_reproducible_and_pickles_without_cache(projector):
    x = _features()
    first = projector.project(x)
    fresh = pickle.loads(pickle.dumps(projector))
    assert getattr(fresh, "_cache", {}) == {}
    assert torch.equal(fresh.project(x), first)
    assert torch.equal(projector.project(x), first)
    assert first.shape == (6, projector.output_dim(23))


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
@pytest.mark.parametrize(
    ("in_dtype", "out_dtype"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.int64, torch.float32),
    ],
)
def test_output_dtype_follows_the_rules(projector, in_dtype, out_dtype):
    x = (_features() * 4).to(in_dtype)
    out = projector.project(x)
    assert out.dtype == out_dtype
    assert out.device == x.device
    # Every dtype is projected with the same matrix: compare with the float64 projection.
    reference = projector.project(x.to(torch.float64))
    tolerance = 1e-12 if out_dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.to(torch.float64), reference, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
@pytest.mark.parametrize("shape", [(23,), (2, 3, 23), (4, 0)])
def test_rejects_inputs_that_are_not_a_nonempty_matrix(projector, shape):
    with pytest.raises(ValueError, match="2-D|p = 0"):
        projector.project(torch.zeros(shape))


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
def test_declared_input_dim_is_enforced(projector):
    bound = dataclasses.replace(projector, input_dim=23)
    assert bound.output_dim(23) == projector.output_dim(23)
    assert bound.project(_features()).shape == projector.project(_features()).shape
    with pytest.raises(ValueError, match="input_dim = 23"):
        bound.project(_features(p=24))
    with pytest.raises(ValueError, match="differs"):
        bound.output_dim(24)


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
def test_empty_batch_gives_empty_output(projector):
    out = projector.project(torch.zeros(0, 23))
    assert out.shape == (0, projector.output_dim(23))


@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
def test_cache_filled_under_inference_mode_still_supports_autograd(projector):
    x = _features()
    with torch.inference_mode():
        projector.project(x)
    leaf = x.clone().requires_grad_()
    projector.project(leaf).sum().backward()
    # d/dx sum(x P) = row sums of P, the same for every example.
    row_sums = projector.project(torch.eye(23, dtype=torch.float64)).sum(dim=1)
    torch.testing.assert_close(leaf.grad, row_sums.expand(6, 23), rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("projector", PROJECTORS, ids=IDS)
def test_cuda_matches_cpu(projector):
    x = _features(batch=9, p=4099)
    on_gpu = projector.project(x.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), projector.project(x), rtol=1e-10, atol=1e-10)
    x32 = x.float()
    torch.testing.assert_close(
        projector.project(x32.cuda()).cpu(), projector.project(x32), rtol=1e-4, atol=1e-4
    )


def test_rademacher_is_seeded_signs():
    signs = rademacher(50, 40, seed=7)
    assert torch.equal(signs, rademacher(50, 40, seed=7))
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and abs(float(signs.mean())) < 0.1
