"""PyYAML's syntax errors, said as advice at the place to fix.

PyYAML words its errors for people who know its grammar (``expected <block end>, but found
'?'``). The mistakes people make in a recipe are few: a line indented unlike its neighbours, a
tab, a quote or bracket never closed, a ``: `` or a ``{{ … }}`` template in an unquoted value.
Each is recognised here from PyYAML's error and the source lines, and put at the line and column
where the fix goes; any other error keeps PyYAML's words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from kontext_pipeline._support.diagnostics import Problem

__all__ = ["syntax_problem"]

INDENTATION = "the indentation of this line does not match the lines above it"

_CLOSERS = {"[": "]", "{": "}"}
_SHOWN = 50
"""The longest value a message shows in full."""
_UNSTARTABLE = re.compile(r"^found character '(?P<char>.+)' that cannot start any token$")
_UNDEFINED_ALIAS = re.compile(r"^found undefined alias '(?P<name>.*)'$")
_DUPLICATE_ANCHOR = re.compile(r"^found duplicate anchor '(?P<name>.*)'; first occurrence$")
_UNKNOWN_ESCAPE = re.compile(r"^found unknown escape character '?(?P<char>.)'?")
_KEY = re.compile(r"^(?P<indent> *)(?P<dashes>(?:- +)*)"
                  r"(?P<key>[^\s#'\"{\[][^:#]*?|'[^']*'|\"[^\"]*\") *:(?: |$)")
_DASH = re.compile(r"^(?P<indent> *)-(?: |$)")


def syntax_problem(file: str, text: str, exc: yaml.MarkedYAMLError) -> Problem:
    """One problem for a YAML syntax error: advice where the mistake is known, else PyYAML's
    own words with both of its positions."""
    lines = text.splitlines()
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    if isinstance(exc, yaml.composer.ComposerError) and "single document" in str(exc.context):
        return Problem(file, line, column, "a recipe holds one YAML document; remove the '---'")
    advice = _advice(exc, lines)
    if advice is not None:
        (line, column), message = advice
        return Problem(file, line, column, message)
    return Problem(file, line, column, _raw(exc))


def _raw(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "invalid YAML"
    context = f" ({exc.context})" if exc.context else ""
    start = exc.context_mark
    if exc.context and start is not None and exc.problem_mark is not None \
            and start.line != exc.problem_mark.line:
        context = f" ({exc.context} that starts at line {start.line + 1}, " \
                  f"column {start.column + 1})"
    return f"YAML syntax error: {problem}{context}"


_Advice = tuple[tuple[int, int], str]


def _advice(exc: yaml.MarkedYAMLError, lines: Sequence[str]) -> _Advice | None:
    if exc.problem_mark is None:
        return None
    error = _Error(exc.problem or "", exc.context or "", exc.problem_mark, exc.context_mark)
    for advise in _ADVISERS:
        found = advise(error, lines)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class _Error:
    problem: str
    context: str
    at: yaml.Mark
    start: yaml.Mark | None

    @property
    def here(self) -> tuple[int, int]:
        return self.at.line + 1, self.at.column + 1


def _tab(error: _Error, _lines: Sequence[str]) -> _Advice | None:
    if "'\\t'" not in error.problem and "tab character" not in error.problem:
        return None
    return error.here, ("a tab character: YAML indents with spaces only; replace the tab with "
                        "spaces")


def _unstartable(error: _Error, _lines: Sequence[str]) -> _Advice | None:
    match = _UNSTARTABLE.match(error.problem)
    if match is None:
        return None
    return error.here, (f"a value cannot start with '{match['char']}' in YAML; put the value in "
                        "quotes")


def _undefined_alias(error: _Error, _lines: Sequence[str]) -> _Advice | None:
    match = _UNDEFINED_ALIAS.match(error.problem)
    if match is None:
        return None
    name = match["name"]
    return error.here, (f"'*{name}' refers to an anchor '&{name}' that is not defined above it; "
                        "define the anchor first, or put the value in quotes if '*' is part of "
                        "the text")


def _duplicate_anchor(error: _Error, _lines: Sequence[str]) -> _Advice | None:
    match = _DUPLICATE_ANCHOR.match(error.context)
    if match is None or error.start is None:
        return None
    return error.here, (f"anchor '&{match['name']}' is defined twice (first on line "
                        f"{error.start.line + 1}); rename one of them")


def _unknown_escape(error: _Error, _lines: Sequence[str]) -> _Advice | None:
    match = _UNKNOWN_ESCAPE.match(error.problem)
    if match is None:
        return None
    backslash = (error.at.line + 1, max(error.at.column, 1))  # the character before the mark
    return backslash, (f"'\\{match['char']}' is not an escape in a double-quoted value: write "
                       "a path with '/' (images/car.png), write '\\\\' for a backslash, or "
                       "use single quotes")


def _unclosed_quote(error: _Error, lines: Sequence[str]) -> _Advice | None:
    start = error.start
    if "quoted scalar" not in error.context or "end of stream" not in error.problem \
            or start is None:
        return None
    quote = _char(lines, start.line, start.column) or '"'
    return (start.line + 1, start.column + 1), (
        f"this {quote} is never closed; end the value with a matching {quote}")


def _unclosed_bracket(error: _Error, lines: Sequence[str]) -> _Advice | None:
    start = error.start
    if not error.context.startswith("while parsing a flow") or start is None:
        return None
    bracket = _char(lines, start.line, start.column)
    if bracket not in _CLOSERS:
        return None
    return (start.line + 1, start.column + 1), (
        f"this '{bracket}' is never closed; close it with '{_CLOSERS[bracket]}', or put the "
        f"value in quotes if the '{bracket}' is part of the text")


def _missing_colon(error: _Error, _lines: Sequence[str]) -> _Advice | None:
    start = error.start
    if error.problem != "could not find expected ':'" or start is None:
        return None
    return (start.line + 1, start.column + 1), (
        "this line has no ':' after its key; write 'key: value', or indent a value that goes "
        "on from the line above further than its key")


def _misplaced(error: _Error, lines: Sequence[str]) -> _Advice | None:
    """A line YAML cannot place: a ``: `` or a template in an unquoted value, or indentation."""
    line, column = error.at.line, error.at.column
    if error.problem == "mapping values are not allowed here":
        return _colon_in_value(line, column, lines) or _indentation(line, lines)
    if error.problem.startswith("expected <block end>"):
        return _after_value(line, column, lines) or _indentation(line, lines)
    return None


_ADVISERS = (_tab, _unstartable, _undefined_alias, _duplicate_anchor, _unknown_escape,
             _unclosed_quote, _unclosed_bracket, _missing_colon, _misplaced)


def _char(lines: Sequence[str], line: int, column: int) -> str | None:
    text = lines[line] if 0 <= line < len(lines) else ""
    return text[column] if 0 <= column < len(text) else None


def _colon_in_value(line: int, column: int, lines: Sequence[str]) -> _Advice | None:
    """``prompt: Replace the sign: SALE``: a second ``: `` on the line starts a key in YAML."""
    text = lines[line] if line < len(lines) else ""
    key = _KEY.match(text)
    if key is None or key.end() > column:
        return None
    return (line + 1, column + 1), (
        "': ' in a value that is not in quotes reads as another key; put the whole value in "
        f"quotes ({_quoted(key['key'], text[key.end():])})")


def _after_value(line: int, column: int, lines: Sequence[str]) -> _Advice | None:
    """Text after a value that YAML ended early: ``{{ color }} car``, ``"say "hi" now"``."""
    text = lines[line] if line < len(lines) else ""
    if column <= len(text) - len(text.lstrip()):
        return None  # the first thing on its line: a matter of indentation
    key = _KEY.match(text)
    value = text[key.end():].strip() if key else text.strip().removeprefix("- ").strip()
    first = value[:1]
    if first in _CLOSERS:
        kind = "mapping" if first == "{" else "list"
        example = f" ({_quoted(key['key'], value)})" if key else ""
        return (line + 1, column + 1), (
            f"a value that starts with '{first}' is a YAML {kind}, not text; put the whole "
            f"value in quotes{example}")
    if first == '"':
        return (line + 1, column + 1), (
            "text after the closing '\"': a quoted value ends at its second '\"'; put single "
            "quotes around the whole value, or write '\\\"' for each '\"' inside it")
    if first == "'":
        return (line + 1, column + 1), (
            "text after the closing \"'\": a quoted value ends at its second \"'\"; put double "
            "quotes around the whole value, or write \"''\" for each \"'\" inside it")
    return None


def _quoted(key: str, value: str) -> str:
    """``prompt: "Make it: blue"``, or ``prompt: "…"`` for a long value or one with quotes."""
    value = value.strip()
    shown = value if len(value) <= _SHOWN and '"' not in value and "\\" not in value else "…"
    return f'{key}: "{shown}"'


def _indentation(line: int, lines: Sequence[str]) -> _Advice:
    """Which earlier line this one should line up with: the nearest column among the keys (or
    the list dashes) above it, the closest line on a tie."""
    text = lines[line] if line < len(lines) else ""
    indent = len(text) - len(text.lstrip(" "))
    position = (line + 1, indent + 1)
    dashless = _dashless_item(line, lines)
    if dashless is not None:
        return dashless
    dash = _DASH.match(text)
    best: tuple[int, int, int, str] | None = None  # distance, lines back, column, what
    for back, earlier in enumerate(reversed(lines[:line]), start=1):
        if dash:
            found = _DASH.match(earlier)
            column, what = (len(found["indent"]), "the '-'") if found else (-1, "")
        else:
            key = _KEY.match(earlier)
            column = len(key["indent"]) + len(key["dashes"]) if key else -1
            what = f"'{key['key']}'" if key else ""
        if column < 0 or column == indent:
            continue
        candidate = (abs(column - indent), back, column, what)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    if best is None:
        return position, f"{INDENTATION}; indent with spaces, and line up the keys of a mapping"
    _, back, column, what = best
    this = "this '-'" if dash else _this_key(text)
    return position, (f"{INDENTATION}: indent {this} to column {column + 1}, like {what} on "
                      f"line {line + 1 - back}")


def _this_key(text: str) -> str:
    key = _KEY.match(text)
    return f"'{key['key']}'" if key else "this line"


def _dashless_item(line: int, lines: Sequence[str]) -> _Advice | None:
    """``-id: edit`` on the line above: a key named ``-id``, not a list item."""
    for earlier in range(line - 1, -1, -1):
        text = lines[earlier]
        stripped = text.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("-") and stripped[1:2] not in ("", " ", "-"):
            word = stripped.split(":", 1)[0]
            return (earlier + 1, len(text) - len(stripped) + 1), (
                f"'{word}' is not a list item: put a space after the '-' (- {word[1:]})")
        return None
    return None
