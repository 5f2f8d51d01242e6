"""The one reader of the run records ``experiments/unlearning.py`` writes, shared by every tool.

A run named ``name`` (Hydra's ``results_name``) is ``<workspace>/results/<name>.json`` (written
whole by ``experiments/unlearning.py``, a script that cannot import this package); tables, draws,
variant choices and timings all read it back through :func:`read_run`.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_path(workspace: Path, name: str) -> Path:
    """Where the run ``name`` of ``workspace`` is recorded."""
    return Path(workspace) / "results" / f"{name}.json"


def find_run(workspace: Path, name: str) -> dict | None:
    """The record of the run ``name`` (finished or not), or ``None`` if there is none."""
    return read_run(workspace, name) if run_path(workspace, name).is_file() else None


def read_run(workspace: Path, name: str, *, finished: bool = False, tuned: bool = False) -> dict:
    """The record of the run ``name``.

    Args:
        finished: require ``status == "ok"`` (a run whose unlearning diverged is otherwise read).
        tuned: require the hyperparameter search the run made on its proxy.

    Raises:
        FileNotFoundError: no such run in the workspace.
        ValueError: ``finished`` or ``tuned`` asked for and the run is not.
    """
    path = run_path(workspace, name)
    if not path.is_file():
        raise FileNotFoundError(f"no run {name!r}: {path} does not exist; run it first")
    record = json.loads(path.read_text())
    if finished and record.get("status") != "ok":
        raise ValueError(f"run {name!r} ({path}) has status {record.get('status')!r}, not 'ok'")
    if tuned and not record.get("tuning"):
        raise ValueError(f"run {name!r} ({path}) made no proxy search; a tuned run is needed")
    return record


def first_finished(found: dict[str, dict], forget: str) -> dict:
    """The first record of ``found`` (method -> run record) whose unlearning finished: the one
    the reference rows (original, oracle, floor), shared by every run, are read from.

    Raises:
        ValueError: every run on ``forget`` diverged.
    """
    for record in found.values():
        if record.get("status") == "ok":
            return record
    raise ValueError(
        f"no run on forget set {forget!r} finished ({sorted(found)} all diverged); the reference "
        "rows need one finished run"
    )
