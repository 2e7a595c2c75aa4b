"""Exports written ahead: each new result's files, provenance inserted, written while the run
waits on the API into a hidden folder of ``--out`` (and the folders they go to made), then
moved into place by the export at the end (a rename), so that the end of a run does not wait on
writing them, nor on making folders.

Nothing reaches its place before the export: a run that stops early (Ctrl-C, a refused key)
leaves ``--out`` as the last run left it, and :meth:`Staging.close` removes the hidden folder
and the folders the staging made that nothing was put in (``--out`` itself too, if it made it).
A killed run's hidden folder is removed by a later run staging into the same ``--out`` once it
is an hour old.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kontext_pipeline._support.files import write_atomic

__all__ = ["STAGING_PREFIX", "Staging"]

STAGING_PREFIX = ".kontext-staging-"
"""How the hidden folder of the files written ahead is named, in ``--out``."""

_STALE_S = 3600.0  # a staging folder this old is a killed run's (a live one is written to)


@dataclass(frozen=True)
class _Staged:
    path: Path
    fingerprint: str  # what the file is made of (see :mod:`._export`)
    sha256: str  # of the file as written


class Staging:
    """The files written ahead for one ``--out``, by path relative to it. Safe to use from
    several threads; each method is best effort (what is not staged, the export writes)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._lock = threading.Condition()
        self._writing = 0  # files being written now (outside the lock)
        self._folder: Path | None = None
        self._made: list[Path] = []  # the folders the staging made, in the order it made them
        self._files: dict[str, _Staged] = {}
        self._names = itertools.count()
        self._closed = False

    def stage(self, relative: str, fingerprint: str, data: bytes, sha256: str) -> None:
        """Write ``data`` (whose sha256 is ``sha256``), the file to go to ``relative``."""
        with self._lock:
            if self._closed or relative in self._files:
                return
            folder = self._folder or self._open()
            if folder is None or not self._make_folders(relative):
                return
            path = folder / str(next(self._names))
            self._writing += 1
        try:
            write_atomic(path, data)
        except OSError:
            return
        else:
            with self._lock:
                self._files[relative] = _Staged(path, fingerprint, sha256)
        finally:
            with self._lock:
                self._writing -= 1
                self._lock.notify_all()

    def place(self, relative: str, fingerprint: str, target: Path) -> str | None:
        """Move the file staged for ``relative`` to ``target`` if it is made of
        ``fingerprint``; returns its sha256, or None (nothing staged, staged of something
        else, or it cannot be moved: the caller writes it)."""
        with self._lock:
            staged = self._files.pop(relative, None)
        if staged is None:
            return None
        if staged.fingerprint != fingerprint:
            with contextlib.suppress(OSError):
                staged.path.unlink()
            return None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.path, target)  # another file system (a mount in --out): written
        except OSError:
            return None
        return staged.sha256

    def close(self) -> None:
        """Remove what was staged and not placed, and the folders the staging made."""
        with self._lock:
            self._closed = True
            while self._writing:  # a file being written now goes with the folder
                self._lock.wait()
            folder, self._folder = self._folder, None
            self._files.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        for made in reversed(self._made):  # deepest first; one that holds anything stays
            with contextlib.suppress(OSError):
                os.rmdir(made)
        self._made.clear()

    def _open(self) -> Path | None:
        """The staging folder, made now (with ``out_dir``, if it is missing); None if it
        cannot be. Called under the lock."""
        missing = []
        folder = self.out_dir
        while not os.path.lexists(folder) and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._made = missing[::-1]
            self._folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out_dir))
        except OSError:
            self._closed = True  # the export says why, if it cannot write either
            return None
        _remove_stale(self.out_dir, keep=self._folder)
        return self._folder

    def _make_folders(self, relative: str) -> bool:
        """Make the folders ``relative`` goes into; False where a link or a file is in the way
        (the export decides what to do there). Called under the lock."""
        folder = self.out_dir
        for part in relative.split("/")[:-1]:
            folder = folder / part
            try:
                os.mkdir(folder)
                self._made.append(folder)
            except FileExistsError:
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.lstat(folder).st_mode):
                        continue
                return False
            except OSError:
                return False
        return True


def _remove_stale(out_dir: Path, *, keep: Path) -> None:
    """Remove the staging folders of killed runs (an hour untouched) from ``out_dir``."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(out_dir) as entries:
        for entry in entries:
            if (entry.name.startswith(STAGING_PREFIX) and entry.path != str(keep)
                    and entry.is_dir(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > _STALE_S):
                shutil.rmtree(entry.path, ignore_errors=True)
