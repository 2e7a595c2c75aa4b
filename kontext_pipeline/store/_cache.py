"""The content-addressed result cache.

Layout (under the cache directory)::

    v1/objects/ab/<sha256>         image bytes, named by their sha256
    v1/entries/cd/<key>.json       one entry per cache key: object, size, request and metadata

Every write goes to a temporary file in the same directory and is renamed into place, so a
reader sees a whole file or none, and concurrent runs sharing the directory corrupt nothing (two
writers of one object write the same bytes). An object is flushed to disk (its bytes and its
name) before the entry that refers to it is written, and the entry before the store returns (so
before the run forgets the journalled task): after a power cut an entry never names an object
that is not there whole, and a result the run was told is stored stays stored.

What the cache holds is input (see :mod:`kontext_pipeline.store._cache_checks`): on every lookup the
entry is read bounded and the object is checked, a regular file (no link is followed) in the
format the step asks for whose sha256 is its entry's, before it is served; anything else is a
miss with a warning, never a wrong image. Nothing is written or removed outside the cache
directory (see :mod:`kontext_pipeline.store._cache_walk`); ``verify`` re-hashes everything.

A write that is killed before its rename (SIGKILL, a crash) leaves its temporary file
(``.tmp-*``) behind, which no lookup ever reads. One older than :data:`STALE_TEMPORARY_S` is
a leftover (a younger one may be a write in progress, here or on another machine sharing the
directory): ``verify`` reports it, ``verify --fix`` and ``gc`` remove it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kontext_pipeline._support.files import (
    TEMPORARY_PREFIX,
    IrregularFileError,
    LinkedFolderError,
    TooLargeError,
    cannot_make,
    write_atomic,
)
from kontext_pipeline.errors import CacheError
from kontext_pipeline.store._cache_checks import (
    FORMATS,
    MAX_ENTRY_BYTES,
    MAX_OBJECT_BYTES,
    DamagedObjectError,
    check_object,
    read_json,
    read_object,
)
from kontext_pipeline.store._cache_walk import LAYOUT_FOLDERS, check_layout, files

__all__ = [
    "CACHE_LAYOUT",
    "STALE_TEMPORARY_S",
    "Cache",
    "CacheEntry",
    "CacheStats",
    "Lookup",
    "default_cache_dir",
]

CACHE_LAYOUT = "v1"
_HEX = set("0123456789abcdef")
STALE_TEMPORARY_S = 3600.0
"""Age (seconds since last written) after which a temporary file is a killed write's leftover."""
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}  # quotas: not on Windows


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """``KONTEXT_CACHE_DIR``, else the user cache directory of the platform."""
    configured = environ.get("KONTEXT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    import platformdirs  # noqa: PLC0415  (only runs need it)

    return Path(platformdirs.user_cache_dir("kontext-pipeline", appauthor=False))


@dataclass(frozen=True)
class CacheEntry:
    """What the cache knows about one key's result."""

    key: str
    object: str  # sha256 of the image bytes
    size: int
    format: str
    width: int
    height: int
    provider: str
    model: str
    seed: int
    request_id: str
    credits: float  # FLUX.2's echoed cost may be fractional
    duration_s: float
    created_at: float
    request: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"layout": CACHE_LAYOUT, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> CacheEntry:
        """The entry in ``data`` (read from a file: ValueError, KeyError or TypeError unless
        each field has its type; :class:`ImplausibleSizeError` unless its size is 1 to
        :data:`~kontext_pipeline.store._cache_checks.MAX_OBJECT_BYTES`)."""
        if not isinstance(data, dict) or data.get("layout") != CACHE_LAYOUT:
            raise ValueError("not an entry of this cache layout")
        fields = {k: data[k] for k in cls.__dataclass_fields__}
        for name, value in fields.items():
            kinds = _FIELD_TYPES.get(name, (str,))
            if type(value) not in kinds:
                raise TypeError(f"{name} is {type(value).__name__}")
        if not 0 < fields["size"] <= MAX_OBJECT_BYTES:
            raise ImplausibleSizeError("no object is that size")
        return cls(**fields)


class ImplausibleSizeError(ValueError):
    """An entry claiming an object of a size no result has (a hostile one: a sparse terabyte
    file that reading would try to hold in memory)."""


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "size": (int,), "width": (int,), "height": (int,), "seed": (int,), "credits": (int, float),
    "duration_s": (int, float), "created_at": (int, float), "request": (dict,)}
"""The type of each field of an entry that is not a string (``bool`` is not an ``int`` here)."""


@dataclass(frozen=True)
class Lookup:
    """A hit (``entry``), a plain miss, or a miss because something was damaged (``problem``)."""

    entry: CacheEntry | None = None
    problem: str | None = None


@dataclass(frozen=True)
class CacheStats:
    entries: int
    objects: int
    bytes: int


def _is_digest(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX


class Cache:
    """The cache in ``directory`` (created on first write)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.root = self.directory / CACHE_LAYOUT

    def check_layout(self, *, deep: bool = True) -> None:
        """Raise CacheError if a folder of the cache is a symbolic link (or a file): the cache
        reads and writes only inside its directory. ``deep``: the fan-out folders too (which
        ``verify --fix`` removes, and the other maintenance commands never enter). Nothing is
        created."""
        check_layout(self.directory, self.root, deep=deep)

    def check_writable(self) -> None:
        """Raise now if the cache could not be written (a run checks before it pays); nothing
        is created."""
        self.check_layout()
        problem = cannot_make(self.root)
        if problem is not None:
            raise CacheError(_write_error(self.directory, problem))

    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / f"{key}.json"

    def lookup(self, key: str, output_format: str | None = None) -> Lookup:
        """The entry for ``key`` if it and its object are intact: the object is a regular file
        of the entry's size, an image of ``output_format`` (the step's; else the entry's, if it
        is a format a cache holds) by its first bytes, and its sha256 is the entry's."""
        entry, problem = self._entry(key)
        if entry is None:
            return Lookup(problem=problem)
        wanted = output_format or entry.format
        if entry.format != wanted or wanted not in FORMATS:
            return Lookup(problem=f"cache entry {key[:12]} is for format "
                                  f"{entry.format[:16]!r}, not {wanted[:16]!r}; the step runs "
                                  "again")
        of = f"cache object {entry.object[:12]} of entry {key[:12]}"
        try:
            check_object(self.object_path(entry.object), entry.object, entry.size, wanted)
        except FileNotFoundError:
            return Lookup(problem=f"{of} is missing; the step runs again")
        except DamagedObjectError as exc:
            return Lookup(problem=f"{of} {exc}; the step runs again")
        except OSError as exc:
            return Lookup(problem=f"{of} cannot be read ({exc.strerror or exc}); the step runs "
                                  "again")
        return Lookup(entry)

    def _entry(self, key: str) -> tuple[CacheEntry | None, str | None]:
        """The entry of ``key`` as its file says (unchecked against its object), or why not
        (None: there is none)."""
        try:
            entry = CacheEntry.from_json(read_json(self.entry_path(key)))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"cache entry {key[:12]} {_damage(exc)}; the step runs again"
        if entry.key != key or not _is_digest(entry.object):
            return None, f"cache entry {key[:12]} does not match its name; the step runs again"
        return entry, None

    def read(self, entry: CacheEntry) -> bytes:
        """The object's bytes, checked as :meth:`lookup` checks them (it may have changed since
        the lookup): DamagedObjectError (a ValueError) says how it is not the entry's image."""
        try:
            return read_object(self.object_path(entry.object), entry.object, entry.size,
                               entry.format)
        except FileNotFoundError:
            raise DamagedObjectError("is missing") from None

    def store(self, data: bytes, entry: CacheEntry, *, durable: bool = True) -> CacheEntry:
        """Store the image bytes, then the entry, each flushed to disk (unless not ``durable``:
        a result that is kept elsewhere too); returns the entry as stored."""
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.object or len(data) != entry.size:
            raise ValueError("the entry does not describe these bytes")
        target = self.object_path(digest)
        try:
            # even if present: an object of this name may be damaged
            write_atomic(target, data, durable=durable, inside=self.directory)
            write_atomic(self.entry_path(entry.key),
                         json.dumps(entry.to_json(), indent=1, sort_keys=True).encode(),
                         durable=durable, inside=self.directory)
        except OSError as exc:
            raise CacheError(_write_error(self.directory, exc)) from exc
        return entry

    def entries(self) -> Iterator[tuple[Path, CacheEntry | None]]:
        """Every entry file, parsed (None where it is damaged: not a regular file, or not an
        entry); links are listed, never followed. An entry that cannot be read (EIO, EMFILE,
        EACCES) is not called damaged, since what is damaged is removed: CacheError."""
        for path in files(self.root / "entries"):
            if path.suffix == ".json":
                try:
                    entry: CacheEntry | None = CacheEntry.from_json(read_json(path))
                except FileNotFoundError:  # removed meanwhile (gc in another process)
                    continue
                except (IrregularFileError, ValueError, KeyError, TypeError):
                    entry = None
                except OSError as exc:
                    raise CacheError(
                        f"cannot read the cache entry {path} ({exc.strerror or exc}); it is "
                        "left as it is: check the disk and the permissions there, then try "
                        "again") from exc
                yield path, entry

    def objects(self) -> Iterator[Path]:
        """Every object file (a link among them too: listed, never followed)."""
        yield from (path for path in files(self.root / "objects") if _is_digest(path.name))

    def leftovers(self, older_than: float = STALE_TEMPORARY_S) -> list[Path]:
        """Temporary files of interrupted writes, last written more than ``older_than``
        seconds ago, sorted by path."""
        now = time.time()
        return sorted(path for name in LAYOUT_FOLDERS for path in files(self.root / name)
                      if path.name.startswith(TEMPORARY_PREFIX) and _age(path, now) > older_than)

    def remove_leftovers(self, older_than: float = STALE_TEMPORARY_S) -> int:
        """Remove the temporary files of interrupted writes (see :meth:`leftovers`); returns
        how many."""
        self.check_layout(deep=False)
        leftovers = self.leftovers(older_than)
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def stats(self) -> CacheStats:
        entries = sum(1 for _ in self.entries())
        objects = list(self.objects())
        return CacheStats(entries, len(objects), sum(_size(p) for p in objects))

    def verify(self, *, fix: bool = False) -> list[str]:
        """Re-hash every object and check every entry, and look for the leftovers of
        interrupted writes and for links; returns the problems found (and, with ``fix``,
        removes what is damaged or left over, and the links themselves)."""
        from kontext_pipeline.store._cache_verify import verify  # noqa: PLC0415

        self.check_layout(deep=False)
        return verify(self, fix=fix)

    def remove_entries(self, keep: set[str] | None = None,
                       older_than: float | None = None) -> int:
        """Remove the entries :meth:`unwanted` finds (see :meth:`remove`); returns how many."""
        return self.remove(self.unwanted(keep, older_than))

    def unwanted(self, keep: set[str] | None = None,
                 older_than: float | None = None) -> list[tuple[Path, CacheEntry | None]]:
        """The damaged entries, those not in ``keep`` (when given), and those created more
        than ``older_than`` seconds ago (when given)."""
        now = time.time()
        found: list[tuple[Path, CacheEntry | None]] = []
        for path, entry in self.entries():
            if (entry is None or (keep is not None and entry.key not in keep)
                    or (older_than is not None and now - entry.created_at > older_than)):
                found.append((path, entry))
        return found

    def remove(self, unwanted: Iterable[tuple[Path, CacheEntry | None]]) -> int:
        """Remove these entries (as :meth:`unwanted` listed them), then the objects no entry
        refers to any more; returns how many entries. An object that no entry ever referred to
        is removed only once it is older than :data:`STALE_TEMPORARY_S`: a run sharing the
        cache may have just stored it and be about to write its entry."""
        self.check_layout(deep=False)
        removed = 0
        now = time.time()
        dropped: set[str] = set()  # the objects of the entries removed now
        for path, entry in unwanted:
            path.unlink(missing_ok=True)
            removed += 1
            if entry is not None:
                dropped.add(entry.object)
        referenced = {entry.object for _, entry in self.entries() if entry is not None}
        for path in self.objects():
            if path.name not in referenced and (path.name in dropped
                                                or _age(path, now) > STALE_TEMPORARY_S):
                path.unlink(missing_ok=True)
        for path in files(self.root / "thumbnails"):  # the reports' thumbnails
            if path.suffix == ".json" and path.name.split("-", 1)[0] not in referenced:
                path.unlink(missing_ok=True)
        return removed

    def clear(self) -> None:
        """Remove everything this cache layout holds (a link inside it is removed, never
        followed)."""
        self.check_layout(deep=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _damage(exc: Exception) -> str:
    """How an entry that could not be read is damaged, as a lookup warns of it."""
    if isinstance(exc, IrregularFileError):
        return "is not a regular file (a symbolic link?)"
    if isinstance(exc, TooLargeError):
        return f"is larger than an entry can be ({MAX_ENTRY_BYTES} bytes)"
    if isinstance(exc, ImplausibleSizeError):
        return f"claims an object of a size no result has (1 to {MAX_OBJECT_BYTES} bytes)"
    return f"is damaged ({type(exc).__name__})"


def _age(path: Path, now: float) -> float:
    """Seconds since ``path`` (a link itself, not what it points at) was last written (0 if it
    is gone already)."""
    try:
        return now - path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def _write_error(directory: Path, error: OSError) -> str:
    """What failed, where, and what to do about it."""
    reason = error.strerror or str(error)
    if isinstance(error, LinkedFolderError) and error.filename:
        where = Path(error.filename)
        shown = where.relative_to(directory).as_posix() if where.is_relative_to(directory) \
            else where
        return (f"cannot write to the cache in {directory}: {shown} {reason}; the cache writes "
                "only inside its own folders: `kontext-pipeline cache verify --fix` removes "
                "such links, or choose another --cache-dir")
    if error.errno in _DISK_FULL:
        advice = ("free some space there (`kontext-pipeline cache gc` removes what your "
                  "recipes no longer reach) or choose another --cache-dir")
    else:
        advice = "check that it is a writable directory, or choose another --cache-dir"
    return f"cannot write to the cache in {directory}: {reason}; {advice}"
