"""Where a recipe's values are written, and how large a recipe may be: what the YAML reader and
the frozen recipe share, in a module that does not import the YAML library (a run of a recipe
that a memo holds never parses it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_SOURCE_BYTES", "JsonPath", "Position"]

MAX_SOURCE_BYTES = 1024 * 1024
"""Recipes are small; anything larger than this is refused before parsing."""

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    """A place in the source, 1-based. ``block`` is True for ``|``/``>`` scalars."""

    line: int
    column: int
    style: str | None = None
