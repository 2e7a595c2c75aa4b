"""Claims on cache keys, across processes: at most one run at a time makes the image of a key.

A claim is an exclusive ``flock`` on a small file (``<key>.lock`` beside the key's journal
entry), held from before the request is submitted until its result is stored or the task has
ended. The operating system releases it when its process dies, however it dies (SIGKILL
included), so a run that waits for a claim learns of a dead holder for free, and then finds the
holder's result in the cache or its accepted task in the journal.

The file is removed by its holder, while still holding it, when the claim is released. Whoever
locks a claim file then checks that the file it locked is still the one at that path (it may
have been removed and made afresh in between), so two processes never both hold one key.
A file left by a process that died holding it is taken over by the next claim of that key, or
removed by :func:`sweep`.

Where ``fcntl`` is missing (Windows) or the file system refuses locks (some network mounts), a
claim is not exclusive (:attr:`Claim.exclusive` is False): runs sharing a cache may then each
pay for a key neither has a result for yet, as they did before claims existed; nothing is ever
damaged either way.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from kontext_pipeline._support.files import make_folders

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows)
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCKS", "Claim", "held", "sweep", "try_claim"]

LOCKS = fcntl is not None
"""Whether claims can be exclusive on this platform."""

_ATTEMPTS = 16  # a file removed under us each time this often is a lock held, for our purposes
_OPEN = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # a link there is not followed


class Claim:
    """A held claim (exclusive, or not where locks are unavailable: then ``problem`` says why)."""

    def __init__(self, path: Path, handle: int | None, problem: str | None = None) -> None:
        self.path = path
        self._handle = handle
        self.problem = problem

    @property
    def exclusive(self) -> bool:
        return self._handle is not None

    def release(self) -> None:
        """Remove the claim's file and let go of it (twice is fine)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            with contextlib.suppress(OSError):  # a leftover costs nothing; sweep() removes it
                os.unlink(self.path)
        finally:
            os.close(handle)  # releases the lock


def try_claim(path: Path, *, inside: Path | None = None) -> Claim | None:
    """Claim ``path`` without waiting: a held :class:`Claim`, or None while another process (or
    another open file of this one) holds it. ``inside``: the folders from there to ``path``
    must be real folders, not links."""
    try:
        handle = _lock(path, inside)
    except OSError as exc:  # cannot be made, or not locked there (ENOLCK: some network mounts)
        return Claim(path, None, f"cannot lock {path}: {exc.strerror or exc}")
    return None if handle is None else Claim(path, handle)


def held(path: Path) -> bool:
    """Whether a process holds the claim of ``path`` now. Found by taking it and letting go at
    once (so a file nobody holds is removed, as :func:`sweep` does)."""
    if not path.exists():
        return False
    claim = try_claim(path)
    if claim is None:
        return True
    claim.release()
    return False


def _lock(path: Path, inside: Path | None) -> int | None:
    """An open handle of the file at ``path`` holding its lock, or None while another holds it."""
    if fcntl is None:
        raise OSError(errno.ENOLCK, "this platform has no file locks")
    for _ in range(_ATTEMPTS):
        if inside is None:
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            make_folders(inside, path.parent)
        handle = os.open(path, _OPEN, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(path, handle):
                return handle
        except BlockingIOError:
            os.close(handle)
            return None
        except BaseException:
            os.close(handle)
            raise
        os.close(handle)  # its last holder removed it as we opened it: lock the new one
    return None


def sweep(paths: list[Path]) -> int:
    """Remove the claim files among ``paths`` that nobody holds (left by processes that died
    holding them); returns how many."""
    removed = 0
    for path in paths:
        if not path.exists():
            continue
        claim = try_claim(path)
        if claim is not None and claim.exclusive:
            claim.release()
            removed += 1
    return removed


def _same_file(path: Path, handle: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
