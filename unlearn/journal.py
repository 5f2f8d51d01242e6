"""A journal of finished proxy evaluations, so that a killed hyperparameter search resumes.

A proxy search (:mod:`unlearn.tuning`) unlearns a proxy forget set with every grid value on
every original, and can run for an hour; killed near its end, it should not start again. Each
evaluation's outcome (mean UA / RA / TA / MIA and proxy KLOM, or that it diverged) is written,
atomically, to its own JSON file named by a hash of everything it depends on: the method's full
description, the originals', training and test sets' fingerprints, the proxy indices, the seeds,
the proxy oracles' margins and the journal's ``context`` (the caller's whole configuration and
the library version). A search resumed with anything different misses every entry and recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tda.atomic import make_directories, write_bytes_atomic
from tda.describe import describe


class SearchJournal:
    """Outcomes of finished evaluations under ``root``, one ``<key>.json`` each.

    Args:
        root: the journal's directory (created on the first entry).
        context: what every key also depends on (e.g. a fingerprint of the run's configuration).
    """

    def __init__(self, root: str | os.PathLike, context: str) -> None:
        self.root, self.context = Path(root), context

    def key(self, **parts: Any) -> str:
        """SHA-256 of the context and the JSON description of ``parts``."""
        text = json.dumps({"context": self.context, **describe(parts)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        """The outcome recorded under ``key``, or ``None``."""
        path = self.root / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: str, outcome: dict) -> None:
        """Record ``outcome`` (JSON-serialisable) under ``key``, atomically."""
        make_directories(self.root)
        data = json.dumps(outcome, allow_nan=False).encode()
        write_bytes_atomic(self.root / f"{key}.json", data)

    def __len__(self) -> int:
        return len(list(self.root.glob("*.json"))) if self.root.exists() else 0

    def clear(self) -> None:
        """Delete every entry (once the search's results are safely written elsewhere)."""
        shutil.rmtree(self.root, ignore_errors=True)
