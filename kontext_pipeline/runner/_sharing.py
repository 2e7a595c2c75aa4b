"""The shared cache in a run: its warnings told as the run's notes, a source of results for
the resolution, and the report thumbnail that travels with each result."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from kontext_pipeline.outputs._thumbnails import ThumbnailStore
from kontext_pipeline.plan._resolution import FromShared
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._shared import SharedCache

__all__ = ["keep_thumbnail", "taking", "telling", "thumbnail_of"]


def telling(shared: SharedCache | None,
             on_warning: Callable[[str], None]) -> contextlib.AbstractContextManager[None]:
    """What goes wrong with the shared cache (on worker threads, too) told as a note."""
    return shared.telling(on_warning) if shared is not None else contextlib.nullcontext()


def taking(shared: SharedCache | None, cache: Cache,
            on_extra: Callable[[CacheEntry, bytes], None]) -> FromShared | None:
    """The shared cache as a source of results that it puts into the local ``cache``."""
    if shared is None:
        return None
    return lambda task, key, expected: shared.fetch_into(
        cache, key, task.params.output_format, on_extra=on_extra, expected=expected)


def keep_thumbnail(store: ThumbnailStore) -> Callable[[CacheEntry, bytes], None]:
    """Keeps the thumbnail uploaded with a result taken from the shared cache: the report
    need not make it again (decoding and scaling the image is most of a report's time)."""
    return lambda entry, record: store.put_record(entry.object, record)


def thumbnail_of(store: ThumbnailStore, entry: CacheEntry, data: bytes) -> bytes:
    """The thumbnail to upload with a new result: the kept one, made now if there is none."""
    store.keep(entry.object, data)
    return store.record(entry.object) or b""
