"""Atomic file publication: what every on-disk record of the library is written with.

A file is written to a unique temporary name beside its destination, flushed and fsynced, then
published in one step: ``os.replace`` (the new content wins) or a no-clobber hard link (the first
writer wins; later writers learn that the file exists). Readers therefore see a whole file or
none, a killed writer leaves only a ``.<name>.<random>.tmp`` that nothing reads, and several
processes can publish into one directory at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _public_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_PUBLIC_MODE = _public_mode()


class HashingWriter:
    """File-like sink that hashes what is written and forwards it to ``file`` (if any)."""

    def __init__(self, file: Any = None) -> None:
        self.file, self.digest = file, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.file.write(data) if self.file is not None else len(data)


def fsync_directory(directory: Path) -> None:
    """Make a publication in ``directory`` durable (where the platform allows it)."""
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_directories(directory: Path) -> None:
    """``mkdir -p directory``, each directory it creates fsynced into its parent, so that files
    published in it survive a power loss (a kill needs no fsync)."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    directory.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_directory(created.parent)


def _publish(temporary: str, path: Path, replace: bool) -> bool:
    if replace:
        os.replace(temporary, path)
        return True
    try:
        os.link(temporary, path)  # atomic create-if-absent
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if path.exists():
            return False
        os.replace(temporary, path)
    return True


def write_atomic(
    path: str | os.PathLike, fill: Callable[[Any], Any], *, replace: bool = True
) -> str | None:
    """Write ``fill(sink)`` to ``path`` atomically and return the content's sha256.

    Args:
        path: destination; parent directories are created.
        fill: writes the content into the file-like ``sink`` it is given.
        replace: ``True`` replaces an existing file; ``False`` keeps it and returns ``None``.
    """
    path = Path(path)
    make_directories(path.parent)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temporary, _PUBLIC_MODE)  # mkstemp makes 0600; published files follow the umask
        with os.fdopen(fd, "wb") as file:
            sink = HashingWriter(file)
            fill(sink)
            file.flush()
            os.fsync(file.fileno())
        published = _publish(temporary, path, replace)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    fsync_directory(path.parent)
    return sink.digest.hexdigest() if published else None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, replace: bool = True) -> bool:
    """Publish ``data`` at ``path`` atomically; returns whether this content was published."""
    return write_atomic(path, lambda sink: sink.write(data), replace=replace) is not None


def write_json(path: str | os.PathLike, value: Any, *, default: Callable | None = None) -> None:
    """Publish ``value`` as indented JSON (plus a final newline) at ``path`` atomically, so a
    killed writer never leaves a truncated record; ``default`` as in :func:`json.dumps`."""
    text = json.dumps(value, indent=2, default=default) + "\n"
    write_bytes_atomic(path, text.encode())


def save_figure(figure: Any, path: str | os.PathLike, **options: Any) -> str:
    """Publish a matplotlib ``figure`` at ``path`` atomically and return the file's sha256.

    The figure is rendered whole into memory first (in the format of ``path``'s suffix;
    ``options`` as in ``Figure.savefig``), then published like any record: drawing straight
    onto ``path`` would leave a truncated image there if the drawing failed or was killed.
    """
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.removeprefix(".") or None, **options)
    return write_atomic(path, lambda sink: sink.write(buffer.getvalue()))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
