"""What every benchmark records beside its numbers: command, versions, machine; and table output."""

from __future__ import annotations

import importlib
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tda.atomic import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not every platform has affinity masks
        return os.cpu_count() or 1


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict[str, Any]:
    """Versions of the libraries compared and a description of the machine."""
    return {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": _version("numpy"),
            "traker": _version("traker"),
            "tda": _version("tda-unlearn"),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "available_cores": available_cores(),
            "torch_threads": threads,
        },
    }


def require_peer(module: str, requirement: str, benchmark: str, instead: str = "") -> None:
    """Stops ``benchmark`` before any work when the peer library it is compared with cannot be
    imported, naming the peer (``requirement``) and, if given, how to run without it."""
    try:
        importlib.import_module(module)
    except ImportError as error:
        message = (
            f"{benchmark} compares with {requirement}, which cannot be imported here ({error}): "
            "install it as benchmarks/README.md says"
        )
        raise SystemExit(message + (f", or {instead}" if instead else "")) from error


def command_line() -> str:
    """The command that ran this benchmark, as it can be pasted into a shell (repository root)."""
    return shlex.join(["python", *sys.orig_argv[1:]])


def output_path(name: str, quick: bool, given: str | None) -> Path:
    """``results/<name>.json``; a smoke run (``--quick``) writes ``runs/quick/<name>.json``
    instead, so it neither overwrites a result nor passes for one."""
    if given is not None:
        return Path(given)
    return REPO_ROOT / ("runs/quick" if quick else "results") / f"{name}.json"


def write_record(path: Path, benchmark: str, settings: dict, threads: int, results: dict) -> None:
    """Write the JSON record of one benchmark run."""
    record = {
        "benchmark": benchmark,
        "command": command_line(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings,
        **environment(threads),
        "results": results,
    }
    write_json(path, record)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_and_std(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (``ddof=1``, as every spread over seeds or runs in
    this repository) of per-seed values; the standard deviation is ``None`` for a single seed."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return {"mean": float(array.mean()), "std": std}


def mean_std_cell(stat: dict[str, float | None], scale: float = 1.0, digits: int = 1) -> str:
    """A :func:`mean_and_std` record as ``"mean ± std"`` times ``scale`` (the mean alone without
    a standard deviation)."""
    mean = f"{scale * stat['mean']:.{digits}f}"
    return mean if stat["std"] is None else f"{mean} ± {scale * stat['std']:.{digits}f}"


def detection_summary(rows: Sequence[dict], found_at: dict[str, str]) -> list[dict]:
    """Per method (in order of appearance), the :func:`mean_and_std` over its seeds' rows of each
    ``found_at`` share (summary key -> the row's ``found_at`` key), the AUC and the seconds."""
    table = []
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        columns = {key: [row["found_at"][at] for row in mine] for key, at in found_at.items()}
        columns |= {name: [row[name] for row in mine] for name in ("auc", "seconds")}
        entry = {"method": method, "seeds": len(mine)}
        table.append(entry | {key: mean_and_std(values) for key, values in columns.items()})
    return table


def detection_table(table: Sequence[dict], found_header: Sequence[str]) -> str:
    """A :func:`detection_summary` as Markdown: the found shares in percent, AUC and seconds."""
    found = [key for key in table[0] if key.startswith("found_at_")] if table else []
    body = [
        [
            entry["method"],
            *(mean_std_cell(entry[key], 100) for key in found),
            mean_std_cell(entry["auc"], digits=3),
            mean_std_cell(entry["seconds"]),
        ]
        for entry in table
    ]
    return markdown_table(["method", *found_header, "AUC", "seconds"], body)
