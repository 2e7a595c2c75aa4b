"""Atomic file writes: a reader sees the whole new file or the old one, never a part."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["write_atomic"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_MODE = 0o666 & ~_UMASK  # what open() would have given a new file


def write_atomic(target: Path, data: bytes | None = None, *, source: Path | None = None) -> None:
    """Write ``data`` (or a copy of ``source``) to ``target`` through a temporary file in the
    same directory, renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as out:
            if source is None:
                out.write(data or b"")
        if source is not None:
            shutil.copyfile(source, temporary)  # the kernel copies (sendfile), not Python
        os.chmod(temporary, _MODE)  # mkstemp makes files private; these are ordinary files
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
