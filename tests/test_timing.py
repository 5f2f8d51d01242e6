"""tda.timing: torch's one-time start-up is paid before the clocks that time unlearning and
oracle retraining run."""

import subprocess
import sys

import pytest

# A fresh interpreter (this process has long paid the start-up): every perf_counter reading taken
# inside the unlearner or the oracles' retraining records whether torch._dynamo was imported yet.
_FIRST_CLOCK = """
import sys, time
import torch
import unlearn
import unlearn.ensembles as ensembles
import unlearn.unlearner as unlearner
import tda
from tda.data.examples import Examples

readings = []

class Clock:
    @staticmethod
    def perf_counter():
        readings.append("torch._dynamo" in sys.modules)
        return time.perf_counter()

{clocked}.time = Clock
torch.manual_seed(0)
model = torch.nn.Linear(3, 2)
data = Examples(torch.randn(20, 3), torch.randint(0, 2, (20,)))
if "{clocked}" == "unlearner":
    request = unlearn.UnlearningRequest([0, 1], train_size=20)
    method = unlearn.FineTune(loop=unlearn.LoopConfig(epochs=1, batch_size=8))
    unlearn.Unlearner(method, compute_metrics=False).unlearn(model, data, request)
else:
    config = tda.TrainConfig(epochs=1, batch_size=8)
    factory = lambda: torch.nn.Linear(3, 2)
    unlearn.load_or_train_oracles(factory, data, [0, 1], config, [0], "{root}")
print(readings[0])
"""


@pytest.mark.parametrize("clocked", ["unlearner", "ensembles"])
def test_the_first_request_or_oracle_starts_its_clock_after_torchs_start_up(clocked, tmp_path):
    code = _FIRST_CLOCK.replace("{clocked}", clocked).replace("{root}", str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "True"
