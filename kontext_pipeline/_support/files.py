"""Atomic file writes: a reader sees the whole new file or the old one, never a part. And reads
of files that may have been tampered with: a symbolic link is not followed, nothing but a regular
file is read, and never more than a bound."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = [
    "TEMPORARY_PREFIX",
    "IrregularFileError",
    "LinkedFolderError",
    "TooLargeError",
    "cannot_make",
    "make_folders",
    "open_regular",
    "read_regular",
    "resolves_inside",
    "write_atomic",
]

TEMPORARY_PREFIX = ".tmp-"
"""How the temporary files of writes in progress are named (a killed write leaves one)."""

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK  # what open() would have given a new file
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows: an lstat() checks there instead
_READ = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
_CHUNK = 1024 * 1024  # bytes read at a time when hashing a file
_LINKED = {errno.ELOOP, errno.EMLINK}  # O_NOFOLLOW met a link: ELOOP, EMLINK on FreeBSD


class IrregularFileError(OSError):
    """A symbolic link, a folder, a pipe or a device where a regular file was expected."""


class TooLargeError(ValueError):
    """A file larger than what is read of its kind."""


class LinkedFolderError(OSError):
    """A symbolic link (or something that is not a folder) where a folder was to be written."""


def resolves_inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, its links followed, is in ``folder`` (a loop of links is not)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a loop of links (RuntimeError before Python 3.13)
        return False


def open_regular(path: Path) -> int:
    """An open handle for reading the regular file at ``path``: a symbolic link there is not
    followed, and a pipe or device is not read (IrregularFileError)."""
    if not _NOFOLLOW and os.path.islink(path):
        raise IrregularFileError(errno.ELOOP, "is a symbolic link", str(path))
    try:
        handle = os.open(path, _READ)  # non-blocking: a pipe would wait for a writer
    except OSError as exc:
        if exc.errno in _LINKED:
            raise IrregularFileError(errno.ELOOP, "is a symbolic link", str(path)) from None
        raise
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise IrregularFileError(errno.EINVAL, "is not a regular file", str(path))
    return handle


def sha256_regular(path: Path, limit: float = math.inf) -> str | None:
    """The hex sha256 of the regular file at ``path`` (see :func:`open_regular`), read in
    chunks; None when it holds more than ``limit`` bytes."""
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(open_regular(path), "rb") as handle:
        while chunk := handle.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            digest.update(chunk)
    return digest.hexdigest()


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (see :func:`open_regular`); TooLargeError if
    it holds more than ``limit`` bytes."""
    with os.fdopen(open_regular(path), "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLargeError(f"{path} is larger than {limit} bytes")
    return data


def make_folders(root: Path, folder: Path) -> None:
    """Make ``folder`` and the folders between it and ``root`` (``root`` itself is made if
    missing, and may be a link: it is the caller's choice), refusing a symbolic link or a file
    on the way (LinkedFolderError), so that nothing is written outside ``root``."""
    if not os.path.lexists(root):
        root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode):
            raise LinkedFolderError(errno.ELOOP, "is a symbolic link, not a folder",
                                    str(current))
        if not stat.S_ISDIR(mode):
            raise LinkedFolderError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(current))


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
                 durable: bool = False, inside: Path | None = None,
                 private: bool = False) -> None:
    """Write ``data`` (or a copy of ``source``) to ``target`` through a temporary file in the
    same directory, renamed into place (over a link at ``target``: the link is replaced, not
    followed). ``durable``: the file and the rename are flushed to disk before returning (a
    power cut then leaves the new file, whole). ``inside``: the folders from there to
    ``target`` must be real folders, not links (see :func:`make_folders`). ``private``: only
    its owner may read it."""
    if inside is None:
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        make_folders(inside, target.parent)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=TEMPORARY_PREFIX)
    try:
        with os.fdopen(handle, "wb") as out:
            if source is None:
                out.write(data or b"")
        if source is not None:
            shutil.copyfile(source, temporary)  # the kernel copies (sendfile), not Python
        if durable:
            _fsync(temporary)
        if not private:
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
