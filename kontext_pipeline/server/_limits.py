"""How much the server reads, and what its query parameters may be: a body over the API's
limits is refused as soon as it is (413), a malformed or oversized parameter answers 4xx in
BFL's shape, never a 500."""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_TASK_ID",
    "read_body",
    "signed_query",
    "task_id_errors",
    "too_large",
]

MAX_BODY_BYTES = 112_000_000
"""A submit body over this many bytes is refused (413) once that many have arrived: four
reference images at the API's 20 MB each, base64-encoded (4 × 26.7 MB), and room for the
rest."""

MAX_TASK_ID = 64
_TASK_ID = re.compile(r"[A-Za-z0-9_-]+")
_MAX_EXPIRY_DIGITS = 12
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request's body, read as it streams in; None once it is over ``limit`` bytes (or
    declares it will be), without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> Response:
    return JSONResponse({"detail": f"Request body too large: at most {limit} bytes"},
                        status_code=413)


def task_id_errors(query: QueryParams) -> list[dict[str, Any]]:
    """What is wrong with a poll's ``id`` (FastAPI's 422 entries), if anything. A well-formed
    id the server does not know is not an error: it answers ``Task not found``."""
    task_id = query.get("id")
    shown = task_id if task_id is None or len(task_id) <= 80 else task_id[:77] + "..."
    if not task_id:
        return [{"type": "missing", "loc": ["query", "id"], "msg": "Field required",
                 "input": None}]
    if len(task_id) > MAX_TASK_ID:
        return [{"type": "string_too_long", "loc": ["query", "id"],
                 "msg": f"String should have at most {MAX_TASK_ID} characters",
                 "input": shown}]
    if not _TASK_ID.fullmatch(task_id):
        return [{"type": "string_pattern_mismatch", "loc": ["query", "id"],
                 "msg": "String should match pattern '^[A-Za-z0-9_-]+$'", "input": shown}]
    return []


def signed_query(query: QueryParams) -> tuple[int, str] | None:
    """A result URL's expiry (``se``, epoch seconds) and signature (``sig``, hex), if both are
    well-formed (ASCII digits only: ``int()`` would take other scripts' digits, or fail on a
    number too long to convert)."""
    expires, sig = query.get("se", ""), query.get("sig", "")
    if not (expires.isascii() and expires.isdigit() and len(expires) <= _MAX_EXPIRY_DIGITS):
        return None
    if not _SIGNATURE.fullmatch(sig):
        return None
    return int(expires), sig
