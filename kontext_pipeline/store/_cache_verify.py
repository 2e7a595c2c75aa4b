"""``cache verify``: every object re-hashed, every entry checked against its object, and what
does not belong (leftovers of interrupted writes, links) found; ``--fix`` removes it.

It walks as :mod:`._cache_walk` does, following no link: a link is reported and
removed itself, never what it points at, so nothing outside the cache directory is read for a
hash or removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kontext_pipeline.store._cache_checks import DamagedObjectError, check_head, hash_file
from kontext_pipeline.store._cache_walk import LAYOUT_FOLDERS, linked_folders

if TYPE_CHECKING:
    from kontext_pipeline.store._cache import Cache, CacheEntry

__all__ = ["verify"]


def verify(cache: Cache, *, fix: bool) -> list[str]:
    """The problems found in ``cache`` (whose layout was checked); ``fix``: each removed."""
    problems: list[str] = []

    def found(path: Path, problem: str) -> None:
        problems.append(problem)
        if fix:
            path.unlink(missing_ok=True)  # a link goes, not what it points at

    for path in cache.leftovers():
        found(path, f"temporary file {_shown(cache, path)} is left over from an interrupted "
                    "write")
    for name in LAYOUT_FOLDERS:
        for path in linked_folders(cache.root / name):
            what = "a symbolic link" if path.is_symlink() else "a file"
            found(path, f"{_shown(cache, path)} is {what} where a folder belongs (not followed)")
    intact: set[str] = set()
    for path in cache.objects():
        try:
            if hash_file(path) == path.name:
                intact.add(path.name)
                continue
            problem = "does not match its hash"
        except DamagedObjectError as exc:
            problem = str(exc)
        except FileNotFoundError:  # removed meanwhile (gc in another process)
            continue
        found(path, f"object {path.name[:12]} {problem}")
    for path, entry in cache.entries():
        reason = _entry_problem(cache, path, entry, intact)
        if reason is not None:
            found(path, f"entry {path.stem[:12]} {reason}")
    return problems


def _entry_problem(cache: Cache, path: Path, entry: CacheEntry | None,
                   intact: set[str]) -> str | None:
    """Why the entry at ``path`` cannot be served (None if it can)."""
    if entry is None:
        return "is damaged"
    if entry.key != path.stem:
        return "does not match its name"
    if entry.object not in intact:
        return f"points at a missing or damaged object {entry.object[:12]}"
    try:
        check_head(cache.object_path(entry.object), entry.size, entry.format)
    except DamagedObjectError as exc:
        return f"does not describe its object {entry.object[:12]}, which {exc}"
    except OSError as exc:
        return f"points at an object that cannot be read ({exc.strerror or exc})"
    return None


def _shown(cache: Cache, path: Path) -> str:
    return Path(os.path.relpath(path, cache.root)).as_posix()
