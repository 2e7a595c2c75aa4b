"""Walking the cache without ever leaving it.

The layout's own folders (``v1`` and its ``objects``, ``entries``, ``journal`` and ``thumbnails``)
must be real folders: a cache where one is a symbolic link (or a file) is refused with a
:class:`~kontext_pipeline.errors.CacheError` before anything is written or removed. Below them,
a walk lists the fan-out folders (``objects/ab``) and their files with ``os.scandir``, following
no link: a link among the fan-out folders is listed as a link and never entered (``cache
verify`` reports it and ``--fix`` removes the link itself); a link among the files is listed as
a file, and removing it removes the link, not what it points at.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from kontext_pipeline.errors import CacheError

__all__ = ["LAYOUT_FOLDERS", "check_layout", "files", "folders", "linked_folders"]

LAYOUT_FOLDERS = ("objects", "entries", "journal", "thumbnails")
"""The folders of a cache layout, each fanned out by the first two characters of a name."""


def _kind(path: Path) -> str | None:
    """What ``path`` is when it is not a real folder (None if it is one, or is not there)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # not there: the write check says why
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return None if stat.S_ISDIR(mode) else "not a folder"


def check_layout(directory: Path, root: Path, *, deep: bool = False) -> None:
    """Raise CacheError if ``root`` (the layout in ``directory``) or one of its folders is a
    symbolic link or not a folder; ``deep``: or one of their fan-out folders is (which ``cache
    verify --fix`` removes)."""
    for folder in (root, *(root / name for name in LAYOUT_FOLDERS)):
        kind = _kind(folder)
        if kind is not None:
            raise CacheError(
                f"cannot use the cache in {directory}: {_relative(directory, folder)} is {kind}; "
                "the cache reads and writes only inside its own folders: make it a real "
                "folder (or remove it), or choose another --cache-dir; nothing was changed")
    if deep:
        for name in LAYOUT_FOLDERS:
            link = next(linked_folders(root / name), None)
            if link is not None:
                raise CacheError(
                    f"cannot use the cache in {directory}: {_relative(directory, link)} is a "
                    "symbolic link or not a folder; the cache writes only inside its own "
                    "folders: `kontext-pipeline cache verify --fix` removes it; nothing was "
                    "changed")


def _relative(directory: Path, path: Path) -> str:
    return path.relative_to(directory).as_posix()


def _scan(base: Path) -> list[os.DirEntry[str]]:
    """The items of the real folder ``base``, by name (none if it is not one)."""
    if _kind(base) is not None:
        return []
    try:
        with os.scandir(base) as items:
            return sorted(items, key=lambda item: item.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def folders(base: Path) -> Iterator[Path]:
    """The fan-out folders of ``base`` that are real folders."""
    for item in _scan(base):
        if item.is_dir(follow_symlinks=False):
            yield Path(item.path)


def linked_folders(base: Path) -> Iterator[Path]:
    """The fan-out items of ``base`` (two characters long) that are links or files, where a
    folder belongs."""
    for item in _scan(base):
        if len(item.name) == 2 and not item.is_dir(follow_symlinks=False):
            yield Path(item.path)


def files(base: Path) -> Iterator[Path]:
    """Everything but folders in the fan-out folders of ``base`` (``base/ab/<name>``), links
    included (listed, never followed), in order."""
    for folder in folders(base):
        for item in _scan(folder):
            if not item.is_dir(follow_symlinks=False):
                yield Path(item.path)
