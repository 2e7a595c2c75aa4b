"""The files of a merge (``report --merge``): where INTO may be, each file a shard exported
checked against its manifest, and copied into INTO.

A shard's folder may have come from anywhere (a CI artifact): a file is read only if it is a
regular file inside the folder, through no link, no larger than an image and its provenance, and
its bytes are the ones the manifest records; what is written goes through no link, into INTO
only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kontext_pipeline._support.files import (
    IrregularFileError,
    TooLargeError,
    cannot_make,
    read_regular,
    resolves_inside,
    write_atomic,
)
from kontext_pipeline.errors import OutputError, UsageError
from kontext_pipeline.outputs._manifest import MANIFEST, StepResult
from kontext_pipeline.outputs._provenance import strip_provenance
from kontext_pipeline.outputs._report_pictures import plainly_relative
from kontext_pipeline.store._cache_checks import MAX_OBJECT_BYTES

__all__ = ["ShardFile", "check_into", "copy_files", "shard_files"]

MAX_FILE_BYTES = MAX_OBJECT_BYTES + 16 * 1024 * 1024
"""An image and its provenance: a larger file is no file a run exported."""


@dataclass(frozen=True)
class ShardFile:
    """A file a shard exported: its folder, the shard (``2/3``), its path relative to the
    folder (``/`` separators), and what its bytes must be: the file as written
    (``output_file_sha256``) when the manifest recorded it, else the image as generated
    (``output_sha256``) once the provenance the export inserted is taken out."""

    folder: Path
    shard: str
    path: str
    file_sha256: str | None
    output_sha256: str | None

    @property
    def source(self) -> Path:
        return self.folder.joinpath(*self.path.split("/"))


def check_into(into: Path, folders: Sequence[Path]) -> None:
    """Refuse an INTO that is a link or inside (or is) a shard's folder (:class:`UsageError`),
    or that cannot be made (:class:`OutputError`); nothing is created."""
    if os.path.islink(into):
        raise UsageError(f"{into} is a symbolic link; name a real folder (or a new one) as "
                         "INTO")
    real = into.resolve()
    for folder in folders:
        shard = folder.resolve()
        if real.is_relative_to(shard):
            where = "is" if real == shard else "is inside"
            raise UsageError(f"{into} {where} the shard folder {folder}; name a folder outside "
                             "every shard's as INTO")
    problem = cannot_make(into)
    if problem is not None:
        raise OutputError(f"cannot create {into}: {problem.strerror or problem}; choose "
                          "another INTO")


def shard_files(shards: Sequence[tuple[Path, str, Sequence[StepResult]]]) -> list[ShardFile]:
    """Every file the shards (folder, shard, steps) exported: each step's ``output`` and
    ``image``, checked now (see :func:`read_checked`); :class:`UsageError` when a manifest
    names a path outside its folder, two shards exported the same path, or a file is not as
    exported."""
    files: dict[str, ShardFile] = {}
    for folder, shard, steps in shards:
        for index, step in enumerate(steps):
            for path in dict.fromkeys((step.output, step.image)):
                if path is None:
                    continue
                if not plainly_relative(path):
                    raise UsageError(f"{folder / MANIFEST}: steps[{index}] names the file "
                                     f"{path!r}, which is not a path inside {folder}; run "
                                     f"shard {shard} again")
                known = files.get(path)
                if known is not None and known.folder != folder:
                    raise UsageError(f"{known.folder} (shard {known.shard}) and {folder} "
                                     f"(shard {shard}) both exported {path}; run the shards "
                                     "again")
                files.setdefault(path, ShardFile(
                    folder, shard, path,
                    step.output_file_sha256 if path == step.output else None,
                    step.output_sha256))
    for file in files.values():
        read_checked(file)
    return list(files.values())


def read_checked(file: ShardFile) -> bytes:
    """The bytes of ``file``, if they are what its shard exported; else :class:`UsageError`
    naming the file and what to do."""
    source, redo = file.source, f"restore it, or run shard {file.shard} again"
    if not resolves_inside(source.parent, file.folder):
        raise UsageError(f"{source} is outside {file.folder} (through a link); {redo}")
    try:
        data = read_regular(source, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise UsageError(f"{source} is missing (shard {file.shard} exported it); "
                         f"{redo}") from None
    except IrregularFileError:
        raise UsageError(f"{source} is not a regular file (a link?); {redo}") from None
    except TooLargeError:
        raise UsageError(f"{source} is larger than any image shard {file.shard} exported; "
                         f"{redo}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if not _as_exported(data, file):
        raise UsageError(f"{source} has changed since shard {file.shard} exported it (its "
                         f"sha256 is not the one its manifest records); {redo}")
    return data


def _as_exported(data: bytes, file: ShardFile) -> bool:
    if file.file_sha256 is not None:
        return hashlib.sha256(data).hexdigest() == file.file_sha256
    generated = strip_provenance(data)
    return (file.output_sha256 is not None and hashlib.sha256(
        data if generated is None else generated).hexdigest() == file.output_sha256)


def copy_files(into: Path, files: Sequence[ShardFile], folders: Sequence[Path]) -> list[str]:
    """Copy ``files`` into ``into`` (each read and checked again as it is copied), through no
    link, never into a shard's folder; returns their paths. :class:`OutputError` when one
    cannot be written."""
    try:
        into.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {into}: {exc.strerror or exc}; choose another "
                          "INTO") from exc
    root = into.resolve()
    shards = [folder.resolve() for folder in folders]
    copied = []
    for file in files:
        target = into.joinpath(*file.path.split("/"))
        real = root.joinpath(*file.path.split("/"))
        if any(real.is_relative_to(shard) for shard in shards):
            raise OutputError(f"refusing to write {target}: it is inside a shard's folder; "
                              "name a folder outside every shard's as INTO")
        data = read_checked(file)
        try:
            write_atomic(target, data, inside=into)
        except OSError as exc:
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        copied.append(file.path)
    return copied
