"""``device="auto"`` and the follow-the-model rule on the CPU (tests/test_gpu.py: on CUDA)."""

import pytest
import torch
from torch import nn

from tda.data.examples import Examples
from tda.device import OnDevice, module_device, on_device, resolve_device, to_device_of
from tda.models import MLP, build_model
from tda.outputs import logits_of


def test_auto_is_cuda_exactly_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_named_devices_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_cuda_without_cuda_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'cuda' was asked for, but CUDA is not available"):
        resolve_device("cuda")


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match="unknown device 'gpu0'.*auto, cpu, cuda"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="device 'meta'.*auto, cpu, cuda, cuda:N or mps"):
        resolve_device("meta")


def test_mps_is_taken_by_name_where_present_and_refused_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' was asked for, but MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device("auto") == torch.device("cpu")


def test_module_device_of_a_stateless_module_is_the_cpu():
    assert module_device(nn.ReLU()) == torch.device("cpu")
    assert module_device(nn.Linear(2, 2)) == torch.device("cpu")


def test_tensors_already_on_the_model_device_are_not_copied():
    x = torch.randn(3, 2)
    (moved,) = to_device_of(nn.Linear(2, 2), x)
    assert moved is x


def test_on_device_builds_the_same_seeded_weights():
    factory = on_device(MLP, "auto")
    assert isinstance(factory, OnDevice) and factory.device == resolve_device("auto")
    here, plain = build_model(factory, seed=3), build_model(MLP, seed=3)
    for a, b in zip(here.state_dict().values(), plain.state_dict().values(), strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)


def test_logits_come_back_on_the_data_device():
    model = build_model(MLP, seed=0)
    examples = Examples(torch.randn(5, 40), torch.zeros(5, dtype=torch.long))
    assert logits_of(model, examples).device == examples.inputs.device
