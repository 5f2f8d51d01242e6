"""The same computations on CUDA and on the CPU (``-m gpu``; skipped where CUDA is absent).

Models live on the GPU and data stays in host memory: every place where a model meets data moves
the batch (tda.device). Float64 problems must agree to rounding; the float32 Hydra pipeline must
give the same scores up to the non-associativity of GPU reductions.
"""

from functools import partial

import numpy as np
import pytest
import torch

import unlearn
from tda.curvature import (
    ConjugateGradientSolver,
    EKFACSolver,
    ExplicitSolver,
    kronecker_parameters,
)
from tda.data import load_mnist1d, load_python_source
from tda.device import on_device
from tda.features import GradientFeaturizer, featurize, open_feature_store
from tda.methods import TRAK, InfluenceFunction, TracIn
from tda.models import MLP, CNN1d, build_model
from tda.outputs import logits_of
from tda.projection import DenseProjector
from tda.task import LanguageModelingTask
from tda.training import TrainConfig, train
from tda.transformer import CausalTransformer
from tests.experiments.entry import run_entry_point

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
FACTORY = partial(MLP, hidden=(16,))
CONFIG = TrainConfig(epochs=2, batch_size=32, checkpoints=2)


@pytest.fixture(scope="module")
def data():
    splits = load_mnist1d(240, 60)
    return splits.train.to(dtype=torch.float64), splits.test.subset(range(20)).to(
        dtype=torch.float64
    )


def float64_mlp():
    return FACTORY().double()


def trained(device: str, data, directory=None):
    model = build_model(on_device(FACTORY, device), seed=0, dtype=torch.float64)
    return train(model, data[0], CONFIG, seed=0, checkpoint_dir=directory)


def test_training_on_cuda_matches_the_cpu_in_float64(data):
    on_gpu, on_cpu = trained("cuda", data).model, trained("cpu", data).model
    assert next(on_gpu.parameters()).device.type == "cuda"
    for a, b in zip(on_gpu.state_dict().values(), on_cpu.state_dict().values(), strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-11)
    logits = logits_of(on_gpu, data[1])
    assert logits.device.type == "cpu"
    torch.testing.assert_close(logits, logits_of(on_cpu, data[1]), rtol=1e-9, atol=1e-11)


def test_featurize_and_trak_on_cuda_match_the_cpu(data, tmp_path):
    featurizer = GradientFeaturizer(DenseProjector(dim=32, seed=1))
    scores = {}
    for device in ("cuda", "cpu"):
        model = trained("cpu", data).model.to(device)
        store = open_feature_store(tmp_path / device, featurizer, shard_size=100)
        splits = {"train": data[0], "query": data[1]}
        featurize(model, splits, featurizer, store, checkpoint_id="m", progress=False)
        scores[device] = TRAK().fit(store).score("query")
    torch.testing.assert_close(scores["cuda"], scores["cpu"], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "solver", [ExplicitSolver(), ConjugateGradientSolver(tol=1e-12, max_iter=2000), EKFACSolver()]
)
def test_influence_on_cuda_matches_the_cpu(data, solver):
    model = trained("cpu", data).model
    on_cpu = InfluenceFunction(solver).fit(model, data[0]).score(data[1])
    on_gpu = InfluenceFunction(solver).fit(model.to("cuda"), data[0]).score(data[1])
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-6, atol=1e-9)


def test_ekfac_influence_of_a_cnn_on_cuda_matches_the_cpu(data):
    # Convolutions go through their unfolded input patches (tda.layer_positions) on either device.
    model = build_model(partial(CNN1d, channels=4), seed=0, dtype=torch.float64)
    on_cpu = InfluenceFunction(EKFACSolver()).fit(model, data[0]).score(data[1])
    on_gpu = InfluenceFunction(EKFACSolver()).fit(model.to("cuda"), data[0]).score(data[1])
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-6, atol=1e-9)


def test_ekfac_influence_of_a_language_model_on_cuda_matches_the_cpu():
    # Token ids stay long on either device; EK-FAC covers the transformer's Linear layers.
    text = load_python_source(n_train=60, n_test=6, context=8)
    factory = partial(CausalTransformer, context=8, dim=8, heads=2, layers=1)
    model = build_model(factory, seed=0, dtype=torch.float64)
    train(model, text.train, TrainConfig(epochs=1, batch_size=16), task=LanguageModelingTask())
    influence = partial(
        InfluenceFunction,
        EKFACSolver(),
        task=LanguageModelingTask(),
        parameters=kronecker_parameters,
    )
    on_cpu = influence().fit(model, text.train).score(text.test)
    on_gpu = influence().fit(model.to("cuda"), text.train).score(text.test)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-6, atol=1e-9)


def test_tracin_on_cuda_matches_the_cpu(data, tmp_path):
    checkpoints = trained("cpu", data, tmp_path).checkpoints
    scores = {
        device: TracIn().fit(on_device(float64_mlp, device), checkpoints, data[0]).score(data[1])
        for device in ("cuda", "cpu")
    }
    torch.testing.assert_close(scores["cuda"].cpu(), scores["cpu"], rtol=1e-6, atol=1e-9)


def test_unlearning_request_on_cuda_keeps_the_mask_and_the_callers_model(data):
    model = trained("cuda", data).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = {name: torch.rand_like(p) < 0.5 for name, p in model.named_parameters()}
    request = unlearn.UnlearningRequest(list(range(0, 240, 10)), train_size=240, seed=0)
    sgd = partial(torch.optim.SGD, lr=0.01, momentum=0.9, weight_decay=0.1)
    method = unlearn.SalUn(loop=unlearn.LoopConfig(epochs=2, optimizer=sgd))
    unlearner = unlearn.Unlearner(method, mask=mask)
    result = unlearner.unlearn(model, data[0], request, test_data=data[1])
    assert next(result.model.parameters()).device.type == "cuda"
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    after = dict(result.model.named_parameters())
    for name, keep in mask.items():
        assert torch.equal(after[name][~keep], before[name][~keep])
        assert not torch.equal(after[name][keep], before[name][keep])
    assert set(result.metrics) >= {"UA", "RA", "TA"}
    assert all(np.isfinite(value) for value in result.metrics.values())


ATTRIBUTORS = ("trak", "if_ekfac", "tracin", "source")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """The tiny experiment's train -> featurize -> score -> retrain -> lds, once per device."""
    runs = {}
    for device in ("cuda", "cpu"):
        workspace, setting = tmp_path_factory.mktemp(device), f"device={device}"
        run_entry_point("train", workspace, setting)
        run_entry_point("featurize", workspace, setting)
        for attributor in ATTRIBUTORS:
            run_entry_point("score", workspace, f"attributor={attributor}", setting)
        run_entry_point("retrain", workspace, setting)
        lds = run_entry_point("lds", workspace, "attributor=trak", setting)
        runs[device] = workspace, lds
    return runs


@pytest.mark.parametrize("attributor", ATTRIBUTORS)
def test_hydra_pipeline_on_cuda_gives_the_cpu_scores(pipelines, attributor):
    on_gpu, on_cpu = (
        np.load(pipelines[device][0] / "scores" / f"{attributor}.npy") for device in ("cuda", "cpu")
    )
    assert np.corrcoef(on_gpu.ravel(), on_cpu.ravel())[0, 1] > 0.999


def test_hydra_lds_on_cuda_is_the_cpu_lds(pipelines):
    assert pipelines["cuda"][1] == pytest.approx(pipelines["cpu"][1], abs=0.02)


UNLEARN = ("experiment=tiny", "progress=false", "models=2", "tuning.models=1", "device=cuda")


def test_hydra_unlearning_runs_on_cuda(tmp_path):
    gap = run_entry_point("unlearning", tmp_path, "unlearner=salun", base=UNLEARN)
    assert np.isfinite(gap)


def test_hydra_valuation_and_ntk_run_on_cuda(tmp_path):
    base = ("experiment=tiny", "progress=false", "device=cuda")
    run_entry_point("valuation", tmp_path, base=base)
    tau = run_entry_point("ntk", tmp_path, "ntk/kernel=trace", base=base)
    assert -1.0 <= tau <= 1.0


def test_seeded_work_gives_the_callers_cuda_rng_back(data):
    """``torch.manual_seed`` reseeds CUDA too; training must restore the caller's CUDA stream."""
    torch.cuda.manual_seed(123)
    state = torch.cuda.get_rng_state()
    trained("cuda", data)
    assert torch.equal(torch.cuda.get_rng_state(), state)
