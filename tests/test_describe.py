import json
import subprocess
import sys
import textwrap
from functools import partial

import numpy as np
import torch

from tda.describe import describe
from tda.models import MLP
from tda.task import ClassificationTask
from tda.training import TrainConfig

ADAM = {"partial": "torch.optim.adam.Adam", "args": [], "kwargs": {"lr": 0.003}}


def test_descriptions_that_key_stored_results_stay_as_they_were():
    """Ensemble recipes, pruning records and search journals are keyed by these: they must not
    change, or every stored workspace would be refused."""
    assert describe(partial(torch.optim.Adam, lr=3e-3)) == ADAM
    assert describe(TrainConfig()) == {
        "type": "tda.training.TrainConfig",
        "epochs": 30,
        "batch_size": 64,
        "optimizer": ADAM,
        "scheduler": None,
        "checkpoints": 1,
        "save_initial": False,
    }
    assert describe(ClassificationTask()) == {"type": "tda.task.ClassificationTask"}
    assert describe(MLP) == "tda.models.MLP"
    assert describe(partial(MLP, hidden=(8,))) == {
        "partial": "tda.models.MLP",
        "args": [],
        "kwargs": {"hidden": [8]},
    }
    assert describe(torch.nn.functional.relu) == "torch.nn.functional.relu"
    assert describe([torch.float64, torch.device("cpu"), np.int64(3), (1, "x")]) == [
        "torch.float64",
        "cpu",
        3,
        [1, "x"],
    ]


def _sgd(lr):
    def optimizer(parameters):
        return torch.optim.SGD(parameters, lr=lr)

    return optimizer


def _countdown():
    def step(n):
        return step(n - 1) if n else 0

    return step


def test_lambdas_and_local_functions_that_differ_describe_differently():
    """They used to be described by their name alone: ``lr=1.0`` read as ``lr=1e-4``."""
    fast, slow = (lambda p: torch.optim.SGD(p, lr=1.0)), (lambda p: torch.optim.SGD(p, lr=1e-4))
    assert describe(fast) != describe(slow)
    assert describe(lambda p: torch.optim.SGD(p, lr=1.0)) == describe(fast)  # same code
    assert describe(_sgd(1.0)) != describe(_sgd(1e-4))  # a captured value
    assert describe(_sgd(1.0)) == describe(_sgd(1.0))
    assert describe(lambda p, lr=1.0: p) != describe(lambda p, lr=2.0: p)  # a default
    assert describe(lambda p, *, lr=1.0: p) != describe(lambda p, *, lr=2.0: p)
    assert describe(lambda: lambda: 1) != describe(lambda: lambda: 2)  # nested code
    assert describe(partial(lambda p, lr: p, lr=1)) != describe(partial(lambda p, lr: -p, lr=1))
    assert describe(_countdown())["closure"]["step"] == {"recursive": "builtins.function"}


def test_numpy_arrays_are_described_by_their_content():
    """They used to be described by their repr, which numpy truncates: big arrays read alike."""
    ones, other = np.zeros(5000), np.zeros(5000)
    other[2500] = 1
    assert describe(ones) != describe(other)
    assert describe(ones) == describe(np.zeros(5000))
    assert describe(ones)["array"] == [5000] and describe(ones)["dtype"] == "float64"
    assert describe(ones) != describe(np.zeros(5000, dtype=np.float32))
    assert describe(np.array([1, "a"], dtype=object)) == [1, "a"]


class _Plain:
    def __init__(self, scale):
        self.scale = scale


def test_an_object_with_the_default_repr_is_described_by_its_attributes():
    """Its repr holds a memory address: described by it, it never matched itself again."""
    assert describe(_Plain(2.0)) == {"type": f"{__name__}._Plain", "attributes": {"scale": 2.0}}
    assert describe(_Plain(2.0)) != describe(_Plain(3.0))


SCRIPT = textwrap.dedent(
    """
    import json, torch
    from tda.describe import describe
    class Task:
        def __init__(self):
            self.weights = torch.ones(3)
    def make(lr):
        return lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9)
    print(json.dumps(describe([Task(), lambda p: torch.optim.Adam(p), make(0.5)])))
    """
)


def test_lambdas_and_plain_objects_describe_the_same_in_every_process():
    """An ensemble trained with them must open again in the next process."""
    runs = [
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    first, second = (json.loads(run.stdout) for run in runs)
    assert first == second
    assert first[0]["attributes"]["weights"]["tensor"] == [3]
    assert first[2]["closure"] == {"lr": 0.5}
