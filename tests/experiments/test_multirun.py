"""The experiment pipeline on the `tiny` setting, run as the command lines a user types.

Parallel jobs (submitit's local executor, which pickles jobs and collects results as on SLURM, and
joblib) must fill the workspace exactly as one process does: the same feature bits, the same
ground-truth outputs. Single-process references call the entry points' functions in this process.
"""

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from subprocess import PIPE, STDOUT, Popen

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tda.datamodels import GroundTruthStore
from tda.features import open_feature_store

REPO = Path(__file__).resolve().parents[2]
TINY = ["experiment=tiny", "progress=false"]
SPLITS = ("train", "query")


def entry_point_command(script: str, workspace: Path, *overrides: str, multirun=False) -> list[str]:
    """The command line of ``experiments/<script>.py`` on the tiny experiment in ``workspace``."""
    command = [sys.executable, f"experiments/{script}.py", *(["-m"] if multirun else [])]
    return [*command, *TINY, f"workspace={workspace}", *overrides]


def run_entry_points(*commands: list[str]) -> str:
    """Run the commands side by side in the repository root; returns their joined output."""
    running = [
        (command, Popen(command, cwd=REPO, stdout=PIPE, stderr=STDOUT, text=True))
        for command in commands
    ]
    outputs = []
    for command, process in running:
        output, _ = process.communicate(timeout=300)
        if process.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{output}")
        outputs.append(output)
    return "\n".join(outputs)


def run_in_process(script: str, workspace: Path, *overrides: str):
    """Compose ``conf/<script>.yaml`` and call the entry point's function in this process."""
    spec = importlib.util.spec_from_file_location(script, REPO / "experiments" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(tiny_config(script, workspace, *overrides))


def tiny_config(primary: str, workspace: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(primary, overrides=[*TINY, f"workspace={workspace}", *overrides])


def job_logs(workspace: Path, script: str) -> list[str]:
    """The log of each job of the (only) multirun of ``script`` in ``workspace``."""
    sweeps = list((workspace / "logs" / f"{script}-multirun").iterdir())
    assert len(sweeps) == 1
    return [path.read_text() for path in sorted(sweeps[0].glob(f"*/{script}.log"))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workspace = tmp_path_factory.mktemp("parallel")
    run_entry_points(entry_point_command("train", workspace))
    return workspace


@pytest.fixture(scope="module")
def parallel_workspace(trained) -> Path:
    """Featurize in 3 submitit jobs while retraining in 2 joblib jobs (they share no files)."""
    run_entry_points(
        entry_point_command(
            "featurize",
            trained,
            "shards=[0],[1],[2]",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=5",
            multirun=True,
        ),
        entry_point_command(
            "retrain", trained, "subsets=[0,1],[2,3]", "hydra/launcher=local", multirun=True
        ),
    )
    return trained


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trained) -> Path:
    """A second workspace with the same models, featurized and retrained by one process each."""
    workspace = tmp_path_factory.mktemp("single")
    shutil.copytree(trained / "models", workspace / "models")
    run_in_process("featurize", workspace)
    run_in_process("retrain", workspace)
    return workspace


def test_train_writes_every_member(trained):
    for seed in (0, 1):
        record = json.loads((trained / "results" / f"train-seed-{seed}.json").read_text())
        assert record["checkpoint"] == "epoch-0002"
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert record["parameters"] == 40 * 16 + 16 + 16 * 10 + 10  # the 40-16-10 MLP
        assert (trained / "models" / f"seed-{seed}" / "epoch-0002.safetensors").is_file()


def test_sharded_featurize_jobs_equal_one_process_bitwise(parallel_workspace, reference):
    # Job 0 wrote train and query shard 0 of two members; jobs 1 and 2 one train shard each.
    written = [
        int(re.search(r"wrote (\d+) shards", log)[1])
        for log in job_logs(parallel_workspace, "featurize")
    ]
    assert written == [4, 2, 2]
    cfg = tiny_config("featurize", parallel_workspace)
    featurizer = instantiate(cfg.featurizer)
    jobs = open_feature_store(parallel_workspace / "features", featurizer, cfg.shard_size)
    single = open_feature_store(reference / "features", featurizer, cfg.shard_size)
    assert jobs.checkpoints() == single.checkpoints() == ["seed-0.epoch-0002", "seed-1.epoch-0002"]
    assert jobs.splits() == single.splits() == {"train": 240, "query": 40}
    assert len(jobs.shards("seed-0.epoch-0002", "train")) == 3
    for checkpoint in jobs.checkpoints():
        for split in SPLITS:
            for name in ("features", "out_to_loss"):
                mine = jobs.load(checkpoint, split, name, verify=True)
                theirs = single.load(checkpoint, split, name, verify=True)
                assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)
    # A rerun finds every shard written: nothing to redo.
    assert run_in_process("featurize", parallel_workspace) == 0


def test_retrain_jobs_fill_the_ground_truth_like_one_process(parallel_workspace, reference):
    logs = job_logs(parallel_workspace, "retrain")
    assert [log.count("trained 4 models") for log in logs] == [1, 1]  # 2 subsets x 2 seeds each
    jobs = GroundTruthStore.open(parallel_workspace / "ground_truth")
    single = GroundTruthStore.open(reference / "ground_truth")
    assert jobs.missing() == []
    assert jobs.masks.shape == (4, 240) and (jobs.masks.sum(axis=1) == 120).all()
    assert np.array_equal(jobs.masks, single.masks)
    assert jobs.query_fingerprint == single.query_fingerprint
    outputs = jobs.outputs()
    assert outputs.shape == (4, 2, 40)
    assert np.array_equal(outputs, single.outputs())
    assert run_in_process("retrain", parallel_workspace) == 0


def test_score_and_lds_write_a_finite_lds(parallel_workspace):
    run_entry_points(entry_point_command("score", parallel_workspace))
    scores = np.load(parallel_workspace / "scores" / "trak.npy")
    assert scores.shape == (40, 240) and np.isfinite(scores).all()
    made = json.loads((parallel_workspace / "scores" / "trak.json").read_text())
    assert made["checkpoints"] == ["seed-0.epoch-0002", "seed-1.epoch-0002"]
    output = run_entry_points(entry_point_command("lds", parallel_workspace))
    assert re.search(r"^LDS -?\d\.\d{3} \[95% CI", output, re.MULTILINE)
    assert re.search(r"^Noise ceiling -?\d\.\d{3}", output, re.MULTILINE)
    record = json.loads((parallel_workspace / "results" / "lds-trak.json").read_text())
    assert -1.0 <= record["lds"]["mean"] <= 1.0
    assert record["lds"]["n_subsets"] == 4 and record["lds"]["n_seeds"] == 2
    assert -1.0 <= record["noise_ceiling"]["mean"] <= 1.0
    assert record["settings"]["experiment_name"] == "tiny"
    assert record["scores_made_with"] == made
    assert "torch" in record["versions"] and "experiment=tiny" in record["overrides"]
