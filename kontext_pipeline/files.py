"""Atomic file writes: a reader sees the whole new file or the old one, never a part."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["TEMPORARY_PREFIX", "cannot_make", "write_atomic"]

TEMPORARY_PREFIX = ".tmp-"
"""How the temporary files of writes in progress are named (a killed write leaves one)."""

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK  # what open() would have given a new file


def cannot_make(directory: Path) -> OSError | None:
    """Why ``directory`` could not be created and written to (None if it could), found without
    creating anything: the nearest part of the path that exists must be a writable folder."""
    existing = directory
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(existing))
    return None


def write_atomic(target: Path, data: bytes | None = None, *, source: Path | None = None,
                 durable: bool = False) -> None:
    """Write ``data`` (or a copy of ``source``) to ``target`` through a temporary file in the
    same directory, renamed into place. ``durable``: the file and the rename are flushed to
    disk before returning (a power cut then leaves the new file, whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=TEMPORARY_PREFIX)
    try:
        with os.fdopen(handle, "wb") as out:
            if source is None:
                out.write(data or b"")
        if source is not None:
            shutil.copyfile(source, temporary)  # the kernel copies (sendfile), not Python
        if durable:
            _fsync(temporary)
        os.chmod(temporary, _MODE)  # mkstemp makes files private; these are ordinary files
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if durable:
        with contextlib.suppress(OSError):  # Windows cannot open a directory to flush it
            _fsync(target.parent)


def _fsync(path: Path | str) -> None:
    """Flush a file's bytes, or a directory's entries (a rename into it), to disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
