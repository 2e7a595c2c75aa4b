"""The key that signs plan memos: a memo is used only if it was written by this user on this
machine, not merely if its checksum is right (anyone who can write into the cache directory,
or restore one into place, as CI caches do, can compute a checksum).

The key lives apart from the memos, in the user *state* directory (on Linux
``$XDG_STATE_HOME/kontext-pipeline/memo.key``, else ``~/.local/state/…``), made once with
random bytes, readable by its owner only. A key that is not a regular file of the right size,
owned by this user and private to them is not used: no memo is then read or written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from pathlib import Path

from kontext_pipeline._support.userdirs import user_dir

__all__ = ["KEY_BYTES", "key_path", "memo_key", "sign"]

KEY_BYTES = 32
_OPEN = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def key_path() -> Path | None:
    """Where the key is kept (None when there is no home to keep it in)."""
    folder = user_dir("state")
    return None if folder is None else folder / "memo.key"


def memo_key(*, create: bool) -> bytes | None:
    """The key, made first if ``create`` and there is none; None if it cannot be trusted."""
    path = key_path()
    if path is None:
        return None
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    if create:
        with contextlib.suppress(OSError):  # made by another run meanwhile, or no place
            _make(path)
        with contextlib.suppress(OSError):
            return _read(path)
    return None


def _make(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o600)
    try:
        os.write(descriptor, os.urandom(KEY_BYTES))
    finally:
        os.close(descriptor)


def _read(path: Path) -> bytes | None:
    descriptor = os.open(path, _OPEN)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or info.st_size != KEY_BYTES:
            return None
        if hasattr(os, "geteuid") and (info.st_uid != os.geteuid() or info.st_mode & 0o077):
            return None
        data = os.read(descriptor, KEY_BYTES + 1)
    finally:
        os.close(descriptor)
    return data if len(data) == KEY_BYTES else None


def sign(key: bytes, body: bytes) -> str:
    """The HMAC-SHA256 of ``body`` under ``key``, in hex."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()
