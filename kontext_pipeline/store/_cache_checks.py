"""What the cache holds is input: a shared, restored or copied cache directory may have been
changed by anyone who could write to it, so nothing read from it is believed unchecked.

An entry is read only if it is a regular file (a symbolic link is never followed) of at most
:data:`MAX_ENTRY_BYTES`, with fields of the right types. An object is served only if it is a
regular file (opened with ``O_NOFOLLOW``), its size is its entry's, its first bytes are those of
an image in the format the step asked for (PNG, JPEG or WebP: the entry's ``format`` field is
believed only where they agree), and its sha256 is the one its entry records (its name). A
lookup reads and hashes the object once; an export checks the very bytes it writes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from kontext_pipeline._support import jsonsafe
from kontext_pipeline._support.files import IrregularFileError, open_regular, read_regular

__all__ = ["FORMATS", "MAX_ENTRY_BYTES", "MAX_OBJECT_BYTES", "DamagedObjectError", "check_head",
           "check_object", "format_of", "hash_file", "named", "read_json", "read_object"]

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}
"""The formats a cached image may have, and how they are named in messages."""

MAX_ENTRY_BYTES = 1_000_000
"""An entry is a few kilobytes (its request document, a prompt); a larger file is not read."""

MAX_OBJECT_BYTES = 50_000_000
"""The largest object an entry may claim: the largest result the bfl provider downloads (its
``MAX_RESULT_BYTES``, not imported here: the cache does not load the HTTP client). An entry
claiming a size outside 1 to this is damaged: a hostile one names a sparse terabyte file."""

_CHUNK = 1 << 20


class DamagedObjectError(ValueError):
    """An object that is not what its entry says; the message says how (``is …``)."""


def format_of(prefix: bytes) -> str | None:
    """``png``, ``jpeg`` or ``webp`` from an image's first 12 bytes (its magic), else None."""
    if prefix.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if prefix.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "webp"
    return None


def named(fmt: str) -> str:
    """A format as messages name it: ``a PNG``, ``a JPEG``, ``a WebP``."""
    return f"a {FORMATS.get(fmt, repr(fmt[:16]))}"


def read_json(path: Path, limit: int = MAX_ENTRY_BYTES) -> Any:
    """The JSON document in the regular file at ``path``, of at most ``limit`` bytes (raises
    OSError, :class:`~kontext_pipeline._support.files.IrregularFileError` or ValueError)."""
    return jsonsafe.loads(read_regular(path, limit))


def read_object(path: Path, digest: str, size: int, fmt: str) -> bytes:
    """The bytes of the object at ``path``, checked (see :func:`check_object`)."""
    handle = _open(path)
    try:
        _check_size(os.fstat(handle).st_size, size)
        data = _read_all(handle, size + 1)  # a byte more: a file growing under us is seen
    finally:
        os.close(handle)
    _check_format(data, fmt)
    if len(data) != size:
        raise DamagedObjectError("changed while it was read")
    if hashlib.sha256(data).hexdigest() != digest:
        raise DamagedObjectError("does not match its sha256 (changed since it was stored)")
    return data


def check_object(path: Path, digest: str, size: int, fmt: str) -> None:
    """Raise :class:`DamagedObjectError` unless the object at ``path`` is a regular file of
    ``size`` bytes, an image of format ``fmt`` by its first bytes, whose sha256 is ``digest``
    (and FileNotFoundError if there is none)."""
    read_object(path, digest, size, fmt)


def check_head(path: Path, size: int, fmt: str) -> None:
    """:func:`check_object` without the hash (for ``verify``, which hashes every object
    once): a regular file of ``size`` bytes, an image of format ``fmt`` by its first bytes."""
    handle = _open(path)
    try:
        _check_size(os.fstat(handle).st_size, size)
        _check_format(os.read(handle, 12), fmt)
    finally:
        os.close(handle)


def hash_file(path: Path) -> str:
    """The sha256 of the regular file at ``path`` (DamagedObjectError if it is not one)."""
    hasher = hashlib.sha256()
    handle = _open(path)
    try:
        while chunk := os.read(handle, _CHUNK):
            hasher.update(chunk)
    finally:
        os.close(handle)
    return hasher.hexdigest()


def _open(path: Path) -> int:
    try:
        return open_regular(path)
    except IrregularFileError:
        raise DamagedObjectError("is not a regular file (a symbolic link?)") from None


def _read_all(handle: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of the file open as ``handle``, read in chunks (``os.read``
    allocates what it is asked for before it reads)."""
    chunks: list[bytes] = []
    while limit > 0 and (chunk := os.read(handle, min(limit, _CHUNK))):
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def _check_size(actual: int, size: int) -> None:
    if actual != size:
        raise DamagedObjectError(f"is {actual} bytes, expected {size} (truncated?)")


def _check_format(head: bytes, fmt: str) -> None:
    if format_of(head[:12]) != fmt:
        raise DamagedObjectError(f"is not {named(fmt)} image (by its first bytes)")
