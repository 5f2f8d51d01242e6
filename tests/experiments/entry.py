"""Run an ``experiments/`` entry point in this process, composed as ``@hydra.main`` composes it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=tiny", "progress=false", "++train.checkpoints=2", "++train.save_initial=true"]


CONFIGS = {"unlearning": "unlearn", "ntk": "valuation_ntk"}  # scripts not named as their config


def run_entry_point(script: str, workspace: Path, *overrides: str, base=TINY):
    """Compose the script's config with ``base`` + ``overrides`` and call its ``main``."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        config = CONFIGS.get(script, script)
        cfg = compose(config, [*base, f"workspace={workspace}", *overrides], True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} and lds.py's overrides
    with open_dict(cfg):
        del cfg["hydra"]
    spec = importlib.util.spec_from_file_location(script, REPO / "experiments" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.main(cfg)
    finally:
        HydraConfig.instance().cfg = None


# Records the torch modules first imported inside an ``Unlearner.unlearn`` call, the clock of every
# unlearning time: a one-time import there is timed as if the method had paid for it.
RECORDER = """
import json, sys
from unlearn.unlearner import Unlearner
timed, imported = Unlearner.unlearn, []
def recording(self, *args, **kwargs):
    before = set(sys.modules)
    result = timed(self, *args, **kwargs)
    imported.extend(sorted(m for m in set(sys.modules) - before if m.startswith("torch")))
    return result
Unlearner.unlearn = recording
"""


def torch_imports_while_unlearning(statements: str) -> list[str]:
    """Run ``statements`` in a fresh interpreter (whose one-time start-up is still to be paid)
    and return the torch modules imported for the first time inside an unlearning run."""
    script = f"{RECORDER}\n{statements}\nprint(json.dumps(imported))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the fresh interpreter failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
