"""Text from recipes, images and API answers, made safe to show on a terminal.

A prompt, a provenance field or an API's status word may hold characters that act on the
terminal showing them: an ANSI sequence that clears the screen or sets the window title, a
carriage return that overwrites a line, a bidi override that shows text reversed, a zero-width
character that hides a difference. Everything the tool prints goes through :func:`printable`
(or, for JSON, :func:`printable_json`), which shows each such character as a visible escape
(``\\x1b``, ``\\u202e``, ``\\n``); any other text, ``é``, ``日本`` or an emoji, stays as it is.
"""

from __future__ import annotations

import functools
import re

__all__ = ["printable", "printable_json"]

_OTHERS = (
    "\x7f-\x9f"  # DEL, C1 controls
    "\xad\u061c\u180e"  # soft hyphen, Arabic letter mark (a bidi mark), Mongolian vowel sep.
    "\u200b-\u200f"  # zero-width space, joiners, left-to-right and right-to-left marks
    "\u2028\u2029"  # line and paragraph separators
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u2069"  # bidi isolates
    "\ufeff"  # zero-width no-break space (byte order mark)
    "\ud800-\udfff"  # lone surrogates (undecodable bytes of a file name): unprintable
)
_ANY = f"[\x00-\x1f{_OTHERS}]"  # with C0 controls, the line feed among them
_BUT_NEWLINE = f"[\x00-\x09\x0b-\x1f{_OTHERS}]"
_IN_JSON = f"[\x00-\x08\x0b\x0c\x0e-\x1f{_OTHERS}]"  # not its whitespace
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


@functools.cache
def _pattern(source: str) -> re.Pattern[str]:
    """Each pattern compiled when first used (every command imports this module)."""
    return re.compile(source)


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control and invisible formatting character shown as an escape.

    ``newlines``: keep line feeds as they are, for text the tool itself lays out over several
    lines (an error message listing steps); a field meant to stay on one line (a status word,
    an event's message) leaves it False.
    """
    return _pattern(_BUT_NEWLINE if newlines else _ANY).sub(_escape, text)


def printable_json(document: str) -> str:
    """A JSON text (from ``json.dumps``) with the characters that :func:`printable` escapes
    and JSON allows as they are (DEL, C1 controls, bidi and zero-width characters, lone
    surrogates) written as ``\\uXXXX``: still valid JSON, the same value when parsed. In a
    JSON text these can only stand inside strings, so each is replaced wherever it is; the
    tab, line feed and carriage return that ``json.dumps`` writes only between values (it
    escapes them in strings) stay as they are."""
    return _pattern(_IN_JSON).sub(lambda match: f"\\u{ord(match[0]):04x}", document)
