"""Parsing a JSON document from outside (an API's answer, a file in the cache or an output
folder) so that hostile input ends in a ValueError, never another exception: ``json.loads``
raises RecursionError for a document nested deeper than the interpreter's recursion limit
(``"[" * 5000`` is 5 KB), which no ``except ValueError`` catches."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["TOO_DEEP", "loads"]

TOO_DEEP = "nested too deeply"
"""The message of the :class:`json.JSONDecodeError` that a too deeply nested document raises."""


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``; a document nested too deeply raises :class:`json.JSONDecodeError`
    (a ValueError) like any other document that is not JSON."""
    try:
        return json.loads(data)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, "", 0) from None
