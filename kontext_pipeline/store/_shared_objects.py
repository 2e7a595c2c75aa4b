"""A shared cache's object: a header line (magic), the cache entry as one line of JSON, the
image, then extra bytes (the report's thumbnail of it); and the checks that make a damaged or
foreign object a miss."""

from __future__ import annotations

import hashlib
import json

from kontext_pipeline._support import jsonsafe
from kontext_pipeline.store._cache import CacheEntry
from kontext_pipeline.store._cache_checks import MAX_ENTRY_BYTES, format_of, named

__all__ = ["MAGIC", "MAX_EXTRA_BYTES", "DamagedResultError", "frame", "read_header", "unframe",
           "unframe_all"]

MAGIC = b"kontext-pipeline shared cache v1\n"
MAX_EXTRA_BYTES = 1_000_000  # a thumbnail is a few kilobytes


class DamagedResultError(ValueError):
    """An object that is not a result of its key; the message says how."""


def frame(entry: CacheEntry, image: bytes, extra: bytes = b"") -> bytes:
    """The object that holds ``entry``, its image and ``extra`` (what the runner keeps of the
    image besides, its report thumbnail: made once by whoever made the image)."""
    if len(extra) > MAX_EXTRA_BYTES:
        extra = b""
    header = json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + header + b"\n" + image + extra


def read_header(key: str, data: bytes) -> tuple[CacheEntry, int]:
    """The entry in an object's first bytes, and where its image starts."""
    if not data.startswith(MAGIC):
        raise DamagedResultError("is not a kontext-pipeline result")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_ENTRY_BYTES)
    if end < 0:
        raise DamagedResultError("has no whole entry")
    try:
        entry = CacheEntry.from_json(jsonsafe.loads(data[len(MAGIC):end]))
    except (ValueError, KeyError, TypeError):
        raise DamagedResultError("holds no valid entry") from None
    if entry.key != key:
        raise DamagedResultError("is the result of another key")
    return entry, end + 1


def unframe(key: str, data: bytes, output_format: str | None) -> tuple[CacheEntry, bytes]:
    """The entry and image of ``key`` in ``data``, each checked against the other."""
    entry, image, _ = unframe_all(key, data, output_format)
    return entry, image


def unframe_all(key: str, data: bytes,
                output_format: str | None) -> tuple[CacheEntry, bytes, bytes]:
    """:func:`unframe`, and the extra bytes after the image (unchecked: their reader checks
    them)."""
    entry, start = read_header(key, data)
    image = data[start:start + entry.size]
    extra = data[start + entry.size:]
    if len(image) != entry.size or len(extra) > MAX_EXTRA_BYTES:
        held = len(data) - start
        raise DamagedResultError(f"holds {held} bytes of image, not {entry.size}")
    if hashlib.sha256(image).hexdigest() != entry.object:
        raise DamagedResultError("holds an image whose sha256 is not its entry's")
    fmt = format_of(image[:12])
    if fmt != entry.format or (output_format is not None and fmt != output_format):
        raise DamagedResultError(f"holds {named(fmt or 'unknown')} image, not "
                                 f"{named(output_format or entry.format)}")
    return entry, image, extra
