"""The template sandbox: Jinja's immutable sandbox, bounded so a template cannot exhaust memory
or time.

Jinja's sandbox keeps templates away from Python internals, but it does not bound what they
build. A one-line prompt such as ``{{ 'x' | center(10**9) }}`` or two nested loops over
``range(100000)`` would take a gigabyte or hours. Here, while a template renders:

* every value it builds is at most :data:`MAX_VALUE` characters or items: checked *before* the
  operations whose result can be far larger than their operands (repetition, powers, padding,
  replacing, joining, ``%`` and ``format`` widths, batches), and after the others;
* it writes at most :data:`MAX_VALUE` characters, literal text included;
* it runs at most :data:`MAX_STEPS` loop iterations, calls and filters.

Every refusal is a :class:`jinja2.exceptions.SecurityError`, which the renderer reports as
"refused by the template sandbox".
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg
from jinja2.visitor import NodeTransformer

__all__ = ["MAX_EXPONENT", "MAX_REPEAT", "MAX_STEPS", "MAX_VALUE", "SandboxEnvironment",
           "budget", "guard_template"]

MAX_VALUE = 100_000
"""Characters (or items) in any value a template builds, and in what one render writes."""

MAX_STEPS = 10_000
"""Loop iterations, calls and filters in one render."""

MAX_REPEAT = 10_000
"""The largest count of a repetition (``'ab' * n``)."""

MAX_EXPONENT = 64
"""The largest exponent of a power (``x ** n``)."""

_MAX_INT_BITS = 14_000
"""About 4,300 decimal digits: the most Python itself will print."""

_LOOP = "_kontext_loop"
_VALUE = "_kontext_value"
_WRITE = "_kontext_write"


@dataclass
class _Budget:
    steps: int = 0
    written: int = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("_BUDGET", default=None)


@contextlib.contextmanager
def budget() -> Iterator[None]:
    """Count one render's steps and output (templates are unbounded outside this block)."""
    token = _BUDGET.set(_Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)


def _step() -> None:
    current = _BUDGET.get()
    if current is None:  # compiling, not rendering
        return
    current.steps += 1
    if current.steps > MAX_STEPS:
        raise SecurityError(f"the template runs more than {MAX_STEPS} loop iterations, calls "
                            "and filters; keep prompt templates simple")


def _too_big(what: str, size: int) -> SecurityError:
    return SecurityError(f"{what} would make a value of {size} characters or items; at most "
                         f"{MAX_VALUE} are allowed")


def _size(value: Any) -> int:
    """Characters or items of ``value`` itself (not of the values it holds)."""
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        return len(value)
    return 0


def _deep_size(value: Any, limit: int) -> int:
    """Characters and items of ``value`` and everything it holds, counted up to just past
    ``limit`` (a list holding the same long text many times is as long as all of them)."""
    total, pending = 0, [value]
    while pending and total <= limit:
        item = pending.pop()
        total += _size(item)
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
    return total


def _checked(what: str, value: Any) -> Any:
    size = _size(value)
    if size > MAX_VALUE:
        raise _too_big(what, size)
    if isinstance(value, int) and not isinstance(value, bool) \
            and value.bit_length() > _MAX_INT_BITS:
        raise SecurityError(f"{what} would make a number of more than 4300 digits")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


def _printf_size(template: str, args: Sequence[Any]) -> int:
    """An upper bound of what ``template % args`` makes, widths and precisions included."""
    size = len(template)
    for match in _PRINTF.finditer(template):
        for part in match.groups():
            if part == "*":
                size += max((a for a in args if _is_int(a)), default=0)
            elif part:
                size += int(part)
    return size + sum(_deep_size(a, MAX_VALUE) for a in args)


def _format_size(template: str, args: Sequence[Any]) -> int:
    """An upper bound of what ``template.format(*args)`` makes."""
    size = len(template) + sum(_deep_size(a, MAX_VALUE) for a in args)
    with contextlib.suppress(ValueError):
        for _text, _field, spec, _conversion in string.Formatter().parse(template):
            if not spec:
                continue
            size += sum(int(n) for n in _NUMBER.findall(spec))
            if "{" in spec:  # a nested width comes from the arguments
                size += max((a for a in args if _is_int(a)), default=0)
    return size


def _replace_size(text: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    found = text.count(old) if old else len(text) + 1
    if _is_int(count) and count >= 0:
        found = min(found, count)
    return len(text) + found * len(new)


def _join_size(separator: str, items: Any) -> int:
    if not isinstance(items, list | tuple | dict | set | frozenset | str):
        return 0  # a generator: its items are counted as they are made
    return _deep_size(items, MAX_VALUE) + len(items) * len(separator)


def _width(value: Any) -> int:
    return value if _is_int(value) else (len(value) if isinstance(value, str) else 0)


def _lines(text: Any) -> int:
    return str(text).count("\n") + 1


_METHOD_SIZES: Mapping[str, Callable[..., int]] = {
    "center": lambda s, width=0, *_: max(len(s), _width(width)),
    "ljust": lambda s, width=0, *_: max(len(s), _width(width)),
    "rjust": lambda s, width=0, *_: max(len(s), _width(width)),
    "zfill": lambda s, width=0, *_: max(len(s), _width(width)),
    "expandtabs": lambda s, tabsize=8, *_: len(s) + s.count("\t") * _width(tabsize),
    "replace": _replace_size,
    "join": _join_size,
    "translate": lambda s, table=None, *_: len(s) * max(
        (_size(v) for v in table.values()), default=1) if isinstance(table, dict) else len(s),
}
"""Estimates of what ``str`` methods make, from the text and the arguments."""

_FILTER_SIZES: Mapping[str, Callable[..., int]] = {
    "center": lambda s, width=80, *_: max(len(str(s)), _width(width)),
    "indent": lambda s, width=4, *_, **__: len(str(s)) + _lines(s) * _width(width),
    "wordwrap": lambda s, width=79, _long=True, wrapstring=None, *_, **__: len(str(s)) + (
        len(str(s)) // max(1, _width(width)) + 1) * len(wrapstring or "\n"),
    "format": lambda s, *args, **kwargs: _printf_size(str(s), [*args, *kwargs.values()]),
    "replace": lambda s, old="", new="", count=None, *_: _replace_size(
        str(s), old, new, -1 if count is None else count),
    "join": lambda items, d="", *_, **__: _join_size(str(d), items),
    "batch": lambda _items, linecount=0, *_: _width(linecount),
    "slice": lambda _items, slices=0, *_: _width(slices),
    "tojson": lambda value, indent=None, *_: _deep_size(value, MAX_VALUE) * (
        1 + _width(indent)),
}
"""Estimates of what filters make, for those whose result can outgrow their operands."""


def _estimate(estimates: Mapping[str, Callable[..., int]], name: str, args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> int:
    estimate = estimates.get(name)
    if estimate is None:
        return 0
    try:
        return estimate(*args, **kwargs)
    except TypeError:  # wrong arguments: the call itself reports them
        return 0


def _guard_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    skip = 0 if _PassArg.from_obj(function) is None else 1  # context, eval context or env

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _step()
        size = _estimate(_FILTER_SIZES, name, args[skip:], kwargs)
        if size > MAX_VALUE:
            raise _too_big(f"the filter '{name}'", size)
        return _checked(f"the filter '{name}'", function(*args, **kwargs))

    return guarded


def _count_loop(iterable: Any) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


@jinja2.pass_context
def _value(_context: Any, value: Any) -> Any:
    return _checked("joining text with '~'", value)


@jinja2.pass_context  # a context filter is never run at compile time, so literal text counts
def _write(_context: Any, value: Any) -> Any:
    return value


def _finalize(value: Any) -> Any:
    """Count what a render writes (every ``{{ … }}`` and, through :func:`_write`, literal
    text) before it is turned into text."""
    current = _BUDGET.get()
    if current is None or isinstance(value, jinja2.Undefined):
        return value
    current.written += _deep_size(value, MAX_VALUE - current.written)
    if current.written > MAX_VALUE:
        raise SecurityError(f"the template writes more than {MAX_VALUE} characters")
    return value


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with StrictUndefined and the bounds of this module. Templates
    must go through :func:`guard_template` before they are compiled."""

    intercepted_binops = frozenset(["*", "**", "%", "+"])

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False,
                         finalize=_finalize)
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters.update({_LOOP: _count_loop, _VALUE: _value, _WRITE: _write})
        lipsum: Callable[..., Any] = self.globals["lipsum"]  # type: ignore[assignment]

        def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20,
                           max: int = 100) -> Any:  # lipsum's own parameter names
            if _is_int(n) and _is_int(max) and n * max * 12 > MAX_VALUE:
                raise _too_big("'lipsum'", n * max * 12)
            return lipsum(n, html, min, max)

        self.globals["lipsum"] = bounded_lipsum

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any,
                   right: Any) -> Any:
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "%" and isinstance(left, str):
            args = list(right.values()) if isinstance(right, dict) else (
                list(right) if isinstance(right, tuple) else [right])
            size = _printf_size(left, args)
            if size > MAX_VALUE:
                raise _too_big("'%' formatting", size)
        result = super().call_binop(context, operator, left, right)
        return _checked(f"'{operator}'", result)

    def call(__self, __context: jinja2.runtime.Context,  # noqa: N805  (Jinja's signature)
             __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        method = getattr(__obj, "__wrapped__", __obj)  # str.format is wrapped by the sandbox
        owner = getattr(method, "__self__", None)
        name = getattr(method, "__name__", "")
        if isinstance(owner, str):
            if name in ("format", "format_map"):
                values = [*args, *kwargs.values()]
                if name == "format_map" and args and isinstance(args[0], dict):
                    values = list(args[0].values())
                size = _format_size(owner, values)
            else:
                size = _estimate(_METHOD_SIZES, name, (owner, *args), kwargs)
            if size > MAX_VALUE:
                raise _too_big(f"'{name}'", size)
        result = super().call(__context, __obj, *args, **kwargs)
        return _checked(f"'{name or 'the call'}'", result)


def _check_power(base: Any, exponent: Any) -> None:
    if not _is_number(exponent):
        return
    if abs(exponent) > MAX_EXPONENT:
        raise SecurityError(f"exponent {exponent} is too large (at most {MAX_EXPONENT})")
    if _is_int(base) and _is_int(exponent) and exponent > 0 \
            and base.bit_length() * exponent > _MAX_INT_BITS:
        raise SecurityError("'**' would make a number of more than 4300 digits")


def _check_product(left: Any, right: Any) -> None:
    if _is_int(left) and _is_int(right):
        if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            raise SecurityError("'*' would make a number of more than 4300 digits")
        return
    count, value = (right, left) if _is_number(right) else (left, right)
    if not (_is_number(count) and isinstance(value, str | list | tuple)):
        return
    if count > MAX_REPEAT:
        raise SecurityError(f"repeating a value {count} times is too much "
                            f"(at most {MAX_REPEAT})")
    size = _deep_size(value, MAX_VALUE) * max(0, int(count))
    if size > MAX_VALUE:
        raise _too_big(f"repeating a value {count} times", size)


class _Guard(NodeTransformer):
    """Counts loop iterations, bounds ``~`` and counts literal text as written."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802  (Jinja's visitor names)
        self.generic_visit(node)
        node.iter = _filtered(node.iter, _LOOP)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return _filtered(node, _VALUE)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        node.nodes = [_filtered(nodes.Const(child.data, lineno=child.lineno), _WRITE)
                      if isinstance(child, nodes.TemplateData) else child
                      for child in node.nodes]
        return node


def _filtered(node: nodes.Node, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


def guard_template(template: nodes.Template) -> nodes.Template:
    """Prepare a parsed template for :class:`SandboxEnvironment` (changes it in place)."""
    _Guard().visit(template)
    return template
