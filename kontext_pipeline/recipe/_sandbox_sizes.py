"""How large what a template builds will be, known *before* it is built.

The template sandbox refuses an operation whose result would be too large from these upper
bounds, computed from the operands alone, so that a value of a gigabyte is never made only to be
measured. Sizes count characters and items. The *deep* size of a value counts everything it
holds, as often as it can be reached: a list that holds the same long text twice is as long as
both copies, since that is what turning it into text makes. Every walk stops just past its
limit, so measuring costs no more than the limit, whatever the value.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jinja2.utils import Namespace as JinjaNamespace

__all__ = ["FILTER_SIZES", "MAX_VALUE", "METHOD_SIZES", "Namespace", "deep_size", "estimate",
           "format_size", "measure", "measure_text", "nested_spec", "printf_size", "size",
           "text_size", "walk"]

MAX_VALUE = 100_000
"""Characters (or items) in any value a template builds, and in what one render writes."""


class Namespace(JinjaNamespace):
    """What ``namespace(…)`` makes in a template: Jinja's namespace (``{% set ns.a = … %}``
    accepts only those), keeping its values where measuring can read them, never in Jinja's
    own private attribute."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]  # no parameter named self: namespace(self=1) is a value
        object.__setattr__(self, "_kontext_values", dict(*args, **kwargs))

    def __getattribute__(self, name: str) -> Any:
        if name == "__class__":
            return object.__getattribute__(self, name)
        try:
            return values_of(self)[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, name: str, value: Any) -> None:
        values_of(self)[name] = value

    def __repr__(self) -> str:
        return f"<Namespace {values_of(self)!r}>"


def values_of(namespace: Namespace) -> dict[str, Any]:
    """The values a template set on ``namespace``."""
    values: dict[str, Any] = object.__getattribute__(namespace, "_kontext_values")
    return values

_VIEWS: tuple[type[Any], ...] = (type({}.keys()), type({}.values()), type({}.items()))
_SIZED: tuple[type[Any], ...] = (str, bytes, list, tuple, dict, set, frozenset, range, *_VIEWS)
_ITERATED: tuple[type[Any], ...] = (list, tuple, set, frozenset, *_VIEWS)
_JOINED: tuple[type[Any], ...] = (list, tuple, dict, set, frozenset, str, *_VIEWS)
_SETS: tuple[type[Any], ...] = (set, frozenset, *_VIEWS)
# Checks go by ``type(value)``: ``isinstance`` asks a value for its ``__class__``, and a
# namespace answers through a ``__getattribute__`` written in Python, slowly.


def size(value: Any) -> int:
    """Characters or items of ``value`` itself (not of the values it holds); 1 for a value
    that holds none (a number), so that every value measured counts."""
    kind = type(value)
    if kind is str or issubclass(kind, _SIZED):
        return len(value)
    return 1


_LEAF_TYPES = frozenset((str, int, float, bool, type(None)))


def _children(value: Any, room: int) -> Any:
    """What ``value`` holds (at most ``room`` of them: the walk stops there anyway)."""
    room, kind = max(0, room), type(value)
    if issubclass(kind, list | tuple):
        return value if len(value) <= room else value[:room]
    if issubclass(kind, dict):
        if 2 * len(value) <= room:
            return (*value, *value.values())
        return itertools.islice(itertools.chain.from_iterable(value.items()), room)
    if issubclass(kind, _ITERATED):
        return itertools.islice(value, room)
    if issubclass(kind, Namespace):
        return (values_of(value),)
    return ()


def walk(value: Any, limit: int, measure: Callable[[Any], int]) -> tuple[int, int]:
    """The sum of ``measure`` over ``value`` and everything it holds, counted up to just past
    ``limit``; and how many values were measured (what the walk cost)."""
    total, visited, pending = 0, 0, [value]
    pop, extend = pending.pop, pending.extend
    while pending and total <= limit:
        item = pop()
        visited += 1
        total += measure(item)
        kind = type(item)
        if kind in _LEAF_TYPES:
            continue
        room = limit - total + 1
        if (kind is list or kind is tuple) and len(item) <= room:  # the common cases, first
            extend(item)
        elif kind is dict and 2 * len(item) <= room:
            extend(item)
            extend(item.values())
        else:
            extend(_children(item, room))
    return total, visited


def _walk(value: Any, limit: int, measure: Callable[[Any], int]) -> int:
    return walk(value, limit, measure)[0]


def deep_size(value: Any, limit: int = MAX_VALUE) -> int:
    """Characters and items of ``value`` and of everything it holds, counted up to just past
    ``limit``."""
    return _walk(value, limit, size)


def _quoted(text: str) -> int:
    """An upper bound of ``len(repr(text))``."""
    if text.isprintable():
        return len(text) + 2 + text.count("\\") + text.count("'")
    return (4 if text.isascii() else 10) * len(text) + 2  # \xNN, \uNNNN, \UNNNNNNNN


_REPR_SIZES: tuple[tuple[type[Any] | tuple[type[Any], ...], Callable[[Any], int]], ...] = (
    (str, lambda s: _quoted(s) + (8 if type(s) is not str else 0)),  # Markup('…')
    (bytes, lambda b: 4 * len(b) + 3),
    (bool, lambda _: 5),
    (int, lambda n: int(n.bit_length()) * 30103 // 100_000 + 2),  # digits, and a sign
    (float, lambda _: 24),
    (dict, lambda d: 2 + 4 * len(d)),
    ((list, tuple), lambda items: 3 + 2 * len(items)),
    (_SETS, lambda items: 13 + 2 * len(items)),
    (Namespace, lambda _: 12),
    (type(None), lambda _: 4),
)


def _repr_size(value: Any) -> int:
    """An upper bound of the text ``value`` adds to the ``repr`` of what holds it, leaving out
    what it holds itself (that is measured on its own)."""
    kind = type(value)
    for kinds, measure_one in _REPR_SIZES:
        if issubclass(kind, kinds):
            return measure_one(value)
    try:  # ranges, loops, macros, the variant: small, and made by the tool, not the template
        return len(repr(value))
    except Exception:  # a value whose repr fails is reported when it is used
        return 0


def text_size(value: Any, limit: int = MAX_VALUE) -> int:
    """An upper bound of ``len(str(value))``, counted up to just past ``limit``."""
    return measure_text(value, limit)[0]


def measure_text(value: Any, limit: int = MAX_VALUE) -> tuple[int, int]:
    """:func:`text_size`, and how many values it measured (what measuring cost)."""
    if issubclass(type(value), str):
        return len(value), 1
    return walk(value, limit, _repr_size)


def measure(value: Any, limit: int = MAX_VALUE) -> tuple[int, int]:
    """:func:`deep_size`, and how many values it measured (what measuring cost)."""
    if type(value) is str:
        return len(value), 1
    return walk(value, limit, size)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _largest_int(values: Sequence[Any]) -> int:
    return max((v for v in values if _is_int(v)), default=0)


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


def printf_size(template: str, args: Sequence[Any]) -> int:
    """An upper bound of what ``template % args`` makes, widths and precisions included."""
    total = len(template)
    for match in _PRINTF.finditer(template):
        for part in match.groups():
            if part == "*":
                total += _largest_int(args)
            elif part:
                total += int(part)
    return total + sum(text_size(a) for a in args)


def nested_spec(template: str) -> bool:
    """Whether a field of ``template.format`` takes part of its spec from another field
    (``'{0:{1}}'``): its width could then be any number, anywhere in the arguments."""
    with contextlib.suppress(ValueError):
        return any(spec and "{" in spec for _, _, spec, _ in string.Formatter().parse(template))
    return False  # not a format template: the call itself says so


def format_size(template: str, args: Sequence[Any]) -> int:
    """An upper bound of what ``template.format(*args)`` makes, ``template`` holding no nested
    field (see :func:`nested_spec`)."""
    total = len(template) + sum(text_size(a) for a in args)
    with contextlib.suppress(ValueError):
        for _text, _field, spec, _conversion in string.Formatter().parse(template):
            if spec:
                total += sum(int(n) for n in _NUMBER.findall(spec))
    return total


def _replace_size(text: Any, old: Any = "", new: Any = "", count: Any = -1) -> int:
    length = text_size(text)
    if not isinstance(old, str) or not isinstance(new, str):
        return length
    found = text.count(old) if isinstance(text, str) and old else length + 1
    if _is_int(count) and count >= 0:
        found = min(found, count)
    return length + found * len(new)


def _join_size(separator: Any, items: Any) -> int:
    if isinstance(items, range):
        widest = max(abs(items.start), abs(items.stop))
        return len(items) * (len(str(separator)) + text_size(widest))
    if not isinstance(items, _JOINED):
        return 0  # a generator: what it yields is checked as it is made
    parts = text_size(items) if not isinstance(items, str) else len(items)
    return parts + len(items) * len(str(separator))


def _width(value: Any) -> int:
    return value if _is_int(value) else (len(value) if isinstance(value, str) else 0)


def _lines(text: Any) -> int:
    return str(text).count("\n") + 1 if isinstance(text, str) else text_size(text) + 1


def _cased_size(text: Any) -> int:
    """Upper-casing can lengthen text: ``'ß'.upper()`` is ``'SS'``, ``'ﬃ'`` is ``'FFI'``."""
    length = text_size(text)
    return length if isinstance(text, str) and text.isascii() else 3 * length


def _split_size(text: str, separator: Any = None, *_: Any, **__: Any) -> int:
    words = text.count(separator) + 1 if isinstance(separator, str) and separator \
        else len(text) // 2 + 1
    return len(text) + words


METHOD_SIZES: Mapping[str, Callable[..., int]] = {
    "center": lambda s, width=0, *_: max(len(s), _width(width)),
    "ljust": lambda s, width=0, *_: max(len(s), _width(width)),
    "rjust": lambda s, width=0, *_: max(len(s), _width(width)),
    "zfill": lambda s, width=0, *_: max(len(s), _width(width)),
    "expandtabs": lambda s, tabsize=8, *_: len(s) + s.count("\t") * _width(tabsize),
    "replace": _replace_size,
    "join": _join_size,
    "translate": lambda s, table=None, *_: len(s) * max(
        (text_size(v) for v in table.values()), default=1) if isinstance(table, dict) else len(s),
    "upper": _cased_size, "lower": _cased_size, "title": _cased_size,
    "capitalize": _cased_size, "swapcase": _cased_size, "casefold": _cased_size,
    "split": _split_size, "rsplit": _split_size,
    "splitlines": lambda s, *_: 2 * len(s) + 1,
}
"""Bounds of what ``str`` methods make, from the text and the arguments."""


def _stringified(function: Callable[..., int]) -> Callable[..., int]:
    """A filter that turns its input into text first makes at least that text."""
    return lambda value, *args, **kwargs: max(text_size(value), function(value, *args, **kwargs))


FILTER_SIZES: Mapping[str, Callable[..., int]] = {
    "center": _stringified(lambda s, width=80, *_: _width(width)),
    "indent": lambda s, width=4, *_, **__: text_size(s) + _lines(s) * _width(width),
    "wordwrap": lambda s, width=79, _long=True, wrapstring=None, *_, **__: text_size(s) + (
        text_size(s) // max(1, _width(width)) + 1) * len(str(wrapstring or "\n")),
    "format": lambda s, *args, **kwargs: printf_size(str(s), [*args, *kwargs.values()]),
    "replace": lambda s, old="", new="", count=None, *_: _replace_size(
        s, old, new, -1 if count is None else count),
    "join": lambda items, d="", *_, **__: _join_size(d, items),
    "string": lambda value, *_: text_size(value),
    "list": lambda value, *_: size(value),
    "upper": _cased_size, "lower": _cased_size, "title": _cased_size,
    "capitalize": _cased_size,
    **{name: _stringified(lambda *_, **__: 0) for name in ("trim", "truncate", "wordcount")},
}
"""Bounds of what filters make, for those whose result can outgrow their input, or that turn
their input into text. The other filters of :data:`._sandbox_names.FILTERS` make no more than they
are given (a number, an item, the items in another order, or fewer of them), and what every
filter makes is measured after too."""


def estimate(estimates: Mapping[str, Callable[..., int]], name: str, args: Sequence[Any],
             kwargs: Mapping[str, Any]) -> int:
    """What ``estimates`` says of ``name`` called with ``args``; 0 when it says nothing or the
    arguments are wrong (the call itself then reports them)."""
    function = estimates.get(name)
    if function is None:
        return 0
    try:
        return function(*args, **kwargs)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return 0
