"""Installed versions of packages, for the provenance records results and audits carry."""

from __future__ import annotations

import platform
from importlib import metadata


def package_versions(*distributions: str) -> dict[str, str | None]:
    """Python's version and each distribution's (``None`` where it is not installed, e.g. this
    library run from a source checkout on ``PYTHONPATH``)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in distributions:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
