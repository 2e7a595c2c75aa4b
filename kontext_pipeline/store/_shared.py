"""The shared cache: results on object storage, behind the local cache, for a team or a CI
fleet to pay once.

Layout (under the URL's prefix)::

    v1/ab/<key>      one object per cache key: a header line (magic), the entry as one line of
                     JSON, the image bytes, then (optionally) the report's thumbnail of it

One object per key makes a result one request to read and one atomic PUT to write: a reader
sees a whole result or none, and two writers of one key each leave a whole, valid one. What the
store holds is input like the local cache: an object is served only if its header is an entry
of its own key and the image's size, format and sha256 are the entry's; anything else is a miss
with a warning (``damaged`` counts them).

The store failing (unreachable, slow, refusing: after the library's retries) is never a step's
failure: the first failure is told once through ``on_warning`` and the shared cache is off for
the rest of the run, which goes on with the local cache. Uploads run on worker threads while the
run goes on; :meth:`SharedCache.close` waits for them (each bounded by the timeout).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kontext_pipeline._support.threads import background_pool
from kontext_pipeline.errors import UsageError
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._cache_checks import MAX_ENTRY_BYTES, MAX_OBJECT_BYTES, named
from kontext_pipeline.store._shared_location import (
    DEFAULT_TIMEOUT,
    SharedLocation,
    describe_failure,
    http_status,
    open_store,
)
from kontext_pipeline.store._shared_objects import (
    MAGIC,
    MAX_EXTRA_BYTES,
    DamagedResultError,
    frame,
    read_header,
    unframe,
    unframe_all,
)

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = ["LAYOUT", "MAX_EXTRA_BYTES", "SharedCache", "SharedStats", "frame", "read_header",
           "unframe", "unframe_all"]

LAYOUT = "v1"
_PEEK = 64 * 1024  # an entry is a few kilobytes: a plan reads this much of each object
_UPLOADERS = 4
_LARGEST = len(MAGIC) + MAX_ENTRY_BYTES + MAX_OBJECT_BYTES + MAX_EXTRA_BYTES
_REFUSED = (401, 403)
_UNSATISFIABLE_RANGE = 416  # the answer to reading the first bytes of an empty object
_TIMEOUT_VARIABLE = "KONTEXT_SHARED_CACHE_TIMEOUT"

Warn = Callable[[str], None]


@dataclass(frozen=True)
class SharedStats:
    """What the store holds under the cache's prefix."""

    results: int
    bytes: int


class SharedCache:
    """The shared cache at ``location`` (an obstore ``store``). ``readonly``: look up, never
    upload. ``on_warning`` is told of a damaged object and of the store's first failure; it
    may be called from a worker thread."""

    def __init__(self, location: SharedLocation, store: ObjectStore, *, readonly: bool = False,
                 timeout: float = DEFAULT_TIMEOUT, on_warning: Warn | None = None,
                 going_on: str = "the run goes on with the local cache only") -> None:
        self.location = location
        self.store = store
        self.readonly = readonly
        self.timeout = timeout
        self.on_warning = on_warning or (lambda _message: None)
        self.going_on = going_on
        self.problem: str | None = None  # why the store is off for the rest of the run
        self.fetched = self.uploaded = self.damaged = 0
        self._lock = threading.Lock()
        self._checked = False
        self._missed: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def open(cls, url: str, environ: Mapping[str, str], *, readonly: bool = False,
             on_warning: Warn | None = None, going_on: str | None = None) -> SharedCache:
        """The shared cache at ``url`` with the environment's credentials and timeout;
        :class:`UsageError` for a URL that names none, or a timeout that is no number."""
        location = SharedLocation.parse(url)
        timeout = _timeout(environ)
        store = open_store(location, environ, timeout=timeout)
        extra: dict[str, Any] = {} if going_on is None else {"going_on": going_on}
        return cls(location, store, readonly=readonly, timeout=timeout, on_warning=on_warning,
                   **extra)

    @property
    def url(self) -> str:
        return self.location.url

    @property
    def on(self) -> bool:
        """Whether the store is still used (it has not failed in this run)."""
        return self.problem is None

    @contextlib.contextmanager
    def telling(self, on_warning: Warn) -> Iterator[None]:
        """Tell ``on_warning`` (instead) of what goes wrong, for the time of a ``with``."""
        previous, self.on_warning = self.on_warning, on_warning
        try:
            yield
        finally:
            self.on_warning = previous

    @staticmethod
    def path(key: str) -> str:
        return f"{LAYOUT}/{key[:2]}/{key}"

    def fetch(self, key: str, output_format: str | None = None) -> tuple[CacheEntry, bytes] | None:
        """The result of ``key`` with its image, checked; None for a miss (also when the object
        is damaged, or the store is off)."""
        found = self._fetch(key, output_format)
        return None if found is None else found[:2]

    def fetch_into(self, cache: Cache, key: str, output_format: str | None = None, *,
                   on_extra: Callable[[CacheEntry, bytes], None] | None = None,
                   expected: str | None = None) -> CacheEntry | None:
        """:meth:`fetch`, stored in the local ``cache`` (not flushed to disk: the store keeps
        it); the entry as stored. ``on_extra`` is given the extra bytes uploaded with it.
        ``expected``: the sha256 of the only image to take (the one a lock records); another
        is a miss."""
        found = self._fetch(key, output_format)
        if found is not None and expected is not None and found[0].object != expected:
            with self._lock:
                self._missed.add(key)  # the lock's record stands, for the whole run
            return None
        if found is None:
            return None
        entry, image, extra = found
        stored = cache.store(image, entry, durable=False)
        if extra and on_extra is not None:
            on_extra(stored, extra)
        return stored

    def _fetch(self, key: str,
               output_format: str | None) -> tuple[CacheEntry, bytes, bytes] | None:
        data = self._get(key)
        if data is None:
            return None
        try:
            found = unframe_all(key, data, output_format)
        except DamagedResultError as exc:
            self._damaged(key, str(exc))
            return None
        with self._lock:
            self.fetched += 1
        return found

    def peek(self, key: str, output_format: str | None = None, *,
             expected: str | None = None) -> CacheEntry | None:
        """The entry of ``key`` from its object's first bytes, without its image (what a plan
        needs to know of it: the image's sha256 and size); None for a miss."""
        data = self._get(key, end=_PEEK)
        if data is None:
            return None
        try:
            if len(data) == _PEEK and data.find(b"\n", len(MAGIC)) < 0:  # a long entry
                data = self._get(key, end=len(MAGIC) + MAX_ENTRY_BYTES + 1) or b""
            entry, _ = read_header(key, data)
        except DamagedResultError as exc:
            self._damaged(key, str(exc))
            return None
        if output_format is not None and entry.format != output_format:
            self._damaged(key, f"is {named(entry.format)} image, not {named(output_format)}")
            return None
        return entry if expected is None or entry.object == expected else None

    def upload(self, entry: CacheEntry, image: bytes,
               extra: Callable[[], bytes] | None = None) -> None:
        """Upload a new result in the background, on low-priority threads (not in a read-only
        cache, nor once the store has failed); ``extra`` makes the bytes to upload with it
        (see :func:`frame`), on that thread."""
        if self.readonly or not self.on:
            return
        with self._lock:
            if self._pool is None:
                self._pool = background_pool(_UPLOADERS, "shared-cache")
            self._pool.submit(self._put, entry, image, extra)

    def close(self) -> None:
        """Wait for the uploads still running (each bounded by the timeout)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def stats(self) -> SharedStats | None:
        """How many results the store holds and their size; None if it cannot be listed."""
        import obstore  # noqa: PLC0415

        if not self.on:
            return None
        results = size = 0
        try:
            for batch in obstore.list(self.store, prefix=f"{LAYOUT}/", chunk_size=1000):
                results += len(batch)
                size += sum(int(item["size"]) for item in batch)
        except Exception as exc:
            self._fail(exc)
            return None
        return SharedStats(results, size)

    def verify(self, *, fix: bool = False) -> list[str] | None:
        """Read and check every result the store holds: what is damaged (removed with ``fix``,
        unless the cache is read-only); None if the store cannot be read."""
        import obstore  # noqa: PLC0415

        problems: list[str] = []
        try:
            for batch in obstore.list(self.store, prefix=f"{LAYOUT}/", chunk_size=1000):
                for item in batch:
                    problem = self._checked_object(str(item["path"]))
                    if problem is None:
                        continue
                    problems.append(problem)
                    if fix and not self.readonly:
                        obstore.delete(self.store, str(item["path"]))
        except Exception as exc:
            self._fail(exc)
            return None
        return problems

    def _checked_object(self, path: str) -> str | None:
        """Why the object at ``path`` is not a result of the key it is named for, or None."""
        import obstore  # noqa: PLC0415

        key = path.rsplit("/", 1)[-1]
        if path != self.path(key) or len(key) != 64 or set(key) - set("0123456789abcdef"):
            return f"{path[:80]}: not a result's name"
        result = obstore.get(self.store, path)
        if int(result.meta["size"]) > _LARGEST:
            return f"{path[:20]}…: larger than any result"
        try:
            unframe(key, bytes(result.bytes()), None)
        except DamagedResultError as exc:
            return f"{path[:20]}… {exc}"
        return None

    def _put(self, entry: CacheEntry, image: bytes, extra: Callable[[], bytes] | None) -> None:
        import obstore  # noqa: PLC0415

        if not self.on or self.readonly:
            return
        attached = b""
        with contextlib.suppress(Exception):  # the thumbnail is a convenience, never a failure
            attached = extra() if extra is not None else b""
        try:
            obstore.put(self.store, self.path(entry.key), frame(entry, image, attached))
        except Exception as exc:
            if http_status(exc) in _REFUSED:  # read-only credentials: lookups still work
                self._refused(exc)
            else:
                self._fail(exc)
            return
        with self._lock:
            self.uploaded += 1

    def _refused(self, error: BaseException) -> None:
        with self._lock:
            if self.readonly:
                return
            self.readonly = True
        self.on_warning(f"shared cache {self.url}: uploads refused "
                        f"({describe_failure(error, self.timeout)}); this run uploads nothing "
                        "more, and still looks results up (--shared-cache-readonly says so "
                        "from the start)")

    def _get(self, key: str, *, end: int | None = None) -> bytes | None:
        """The object of ``key`` (its first ``end`` bytes), or None: a miss, or the store off."""
        import obstore  # noqa: PLC0415
        from obstore.exceptions import NotFoundError  # noqa: PLC0415

        if not self._usable() or key in self._missed:
            return None
        try:
            if end is not None:
                return bytes(obstore.get_range(self.store, self.path(key), start=0, end=end))
            result = obstore.get(self.store, self.path(key))
            size = int(result.meta["size"])
            if not 0 < size <= _LARGEST:
                self._damaged(key, f"is {size} bytes, more than any result" if size else
                              "is empty")
                return None
            return bytes(result.bytes())
        except (NotFoundError, FileNotFoundError):  # the library raises either
            return None  # not remembered: another job may upload it before its request
        except Exception as exc:
            if end is not None and http_status(exc) == _UNSATISFIABLE_RANGE:  # an empty object
                self._damaged(key, "is empty")
            else:
                self._fail(exc)
            return None

    def _usable(self) -> bool:
        """Whether the store is on; the first time, whether its bucket answers at all (a
        missing bucket would otherwise look like a store that holds nothing)."""
        import obstore  # noqa: PLC0415

        with self._lock:
            first, self._checked = not self._checked, True
        if first and self.on:
            try:
                next(iter(obstore.list(self.store, prefix=f"{LAYOUT}/", chunk_size=1)), None)
            except Exception as exc:
                self._fail(exc)
        return self.on

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self.problem is not None:
                return
            self.problem = describe_failure(error, self.timeout)
        self.on_warning(f"shared cache {self.url}: {self.problem}; {self.going_on}")

    def _damaged(self, key: str, why: str) -> None:
        with self._lock:
            self.damaged += 1
            self._missed.add(key)  # told once: the step's look-up before its request skips it
        self.on_warning(f"shared cache object {self.path(key)[:20]}… {why}; it is not used")


def _timeout(environ: Mapping[str, str]) -> float:
    text = environ.get(_TIMEOUT_VARIABLE)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise UsageError(f"{_TIMEOUT_VARIABLE}={text[:40]!r} is not a number of seconds over "
                         "0 and at most 3600")
    return value
