"""Removing what the last run exported into ``--out`` and this run no longer does: the other
variants' files after ``--var color=teal``, an output renamed or removed from the recipe, the
image under ``steps/`` of a step that became an output or was removed.

Only a file still exactly as the last run exported it is removed (its sha256 is the one recorded);
a file edited, replaced or added since is kept, with a warning that names it. A folder left empty
goes too (and ``steps/`` when its last folder goes). When the last manifest is missing,
unreadable or another recipe's, only the files the recipe's lock lists are candidates (a fresh
checkout: the lock and the files are committed, the manifest is not).
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from kontext_pipeline.errors import UsageError
from kontext_pipeline.outputs._manifest import MANIFEST, read_manifest
from kontext_pipeline.outputs._provenance import read_provenance

__all__ = ["Recorded", "last_exports", "remove_stale"]

MAX_CHECKED_BYTES = 256 * 1024 * 1024
"""A larger file is no image this tool exported: it is kept unread."""

_NEVER = frozenset({MANIFEST, "report.html", ".kontext-export.json"})
_NAMED_PER_FOLDER = 5  # files named in a kept folder before a count of the rest


@dataclass(frozen=True)
class Recorded:
    """What the last run recorded of a file it exported."""

    file_sha256: str | None = None  # the file as written (``output_file_sha256``)
    output_sha256: str | None = None  # the image as generated: all older manifests have


def last_exports(out_dir: Path, pipeline: str, also: Mapping[str, Recorded],
                 locked: Mapping[str, Recorded] | None = None) -> dict[str, Recorded]:
    """The files the last run of ``pipeline`` into ``out_dir`` exported, by path relative to it:
    the outputs and step images its ``manifest.json`` lists, and ``also`` (the export state,
    which lists an image exported under several names too); and ``locked``, the files the
    recipe's lock lists there, which say it where the manifest and the export state are not
    (they are not committed: a fresh checkout has neither)."""
    recorded = dict(locked or {})
    try:
        manifest = read_manifest(out_dir / MANIFEST)
    except UsageError:
        return recorded
    if manifest.pipeline != pipeline:
        return recorded
    recorded.update(also)
    for step in manifest.steps:
        if step.output is not None:
            known = recorded.get(step.output, Recorded())
            recorded[step.output] = Recorded(step.output_file_sha256 or known.file_sha256,
                                             step.output_sha256)
        if step.image is not None and step.image != step.output:
            known = recorded.get(step.image, Recorded())
            recorded[step.image] = Recorded(known.file_sha256, step.output_sha256)
    return recorded


def remove_stale(out_dir: Path, before: Mapping[str, Recorded], *, keep: Collection[str],
                 on_warning: Callable[[str], None]) -> None:
    """Remove each file of ``before`` that is not in ``keep`` and is still as recorded, then
    the folders of those files that are left empty and hold nothing of ``keep``."""
    root = out_dir.resolve()
    kept: set[str] = set()
    folders: set[str] = set()
    for relative in sorted(set(before) - set(keep)):
        path = _inside(root, relative)
        if path is None:
            continue
        folders.update(_parents(relative))
        try:
            info = path.lstat()
        except OSError:  # gone already
            continue
        shown = out_dir / relative
        try:
            same = stat.S_ISREG(info.st_mode) and _as_exported(path, info.st_size,
                                                                before[relative])
            if same:
                path.unlink()
        except OSError as exc:
            on_warning(f"kept {shown}: cannot remove it ({exc.strerror or exc})")
            kept.add(relative)
            continue
        if not same:
            on_warning(f"kept {shown}: it is not as the last run exported it, and this run no "
                       "longer exports it")
            kept.add(relative)
    in_use = {folder for relative in keep for folder in _parents(relative)}
    # the deepest first: ``steps/color=red`` before ``steps``
    for folder in sorted(folders - in_use, key=lambda f: (-f.count("/"), f)):
        if not _remove_folder(out_dir, root, folder, kept, on_warning):
            kept.add(folder)


def _parents(relative: str) -> list[str]:
    """The folders above ``relative`` inside ``--out``: ``a/b/c.png`` -> ``a/b``, ``a``."""
    parts = relative.split("/")[:-1]
    return ["/".join(parts[:depth]) for depth in range(len(parts), 0, -1)]


def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it is a plain path inside ``root`` through no link (a manifest
    edited by hand could name anything), else None."""
    parts = relative.split("/")
    if ("\\" in relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or (len(parts) == 1 and relative in _NEVER)):
        return None
    path = root.joinpath(*parts)
    try:
        if path.parent.resolve() != path.parent:
            return None
    except OSError:
        return None
    return path


def _as_exported(path: Path, size: int, recorded: Recorded) -> bool:
    """Whether the file at ``path`` is the very file the last run exported there."""
    if size > MAX_CHECKED_BYTES:
        return False
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if recorded.file_sha256 is not None:
        return digest == recorded.file_sha256
    if recorded.output_sha256 is None:
        return False
    if digest == recorded.output_sha256:  # exported without provenance
        return True
    # a manifest from before output_file_sha256: the file must be the generated image with
    # exactly the provenance this tool inserts
    try:
        found = read_provenance(data)
    except ValueError:
        return False
    return found is not None and found.output_sha256 == recorded.output_sha256


def _remove_folder(out_dir: Path, root: Path, folder: str, kept: set[str],
                   on_warning: Callable[[str], None]) -> bool:
    """Remove ``folder`` if it is empty, else warn of what is in it that the last run did not
    export (``kept`` holds what it did and is kept); whether it is gone."""
    directory = root / folder
    try:
        if directory.is_symlink() or not directory.is_dir():
            return not directory.exists()
        left = sorted(entry.name for entry in directory.iterdir())
        if not left:
            directory.rmdir()
            return True
    except OSError:
        return False
    others = [name for name in left if f"{folder}/{name}" not in kept]
    for name in others[:_NAMED_PER_FOLDER]:
        on_warning(f"kept {out_dir / folder / name}: the last run did not export it, and this "
                   "run exports nothing to its folder")
    if len(others) > _NAMED_PER_FOLDER:
        on_warning(f"kept {len(others) - _NAMED_PER_FOLDER} more files in {out_dir / folder} "
                   "that the last run did not export")
    return False
