"""The template sandbox: Jinja's immutable sandbox, bounded so a template cannot exhaust memory
or time.

Jinja's sandbox keeps templates away from Python internals, but it does not bound what they
build. A one-line prompt such as ``{{ 'x' | center(10**9) }}``, a ``~`` that doubles a text
forty times, or two nested loops over ``range(100000)`` would take gigabytes or hours. Here:

* every value a template builds is at most
  :data:`._sandbox_sizes.MAX_VALUE` characters or items, counting everything it
  holds (a list holding one list twice holds it twice): checked *before* each operation whose
  result can be larger than its operands (``~``, repetition, powers, padding, replacing,
  joining, ``%`` and ``format``, turning a value into text, list and mapping literals), from
  the sizes of the operands (:mod:`kontext_pipeline.recipe._sandbox_sizes`), and after the others;
* the work of each render, and of all the renders of one recipe, is counted and bounded
  (:mod:`kontext_pipeline.recipe._sandbox_budget`);
* nothing is evaluated while a template compiles (Jinja would fold ``{{ 'x' | center(99999) }}``
  into the compiled code, outside every budget): filters are context filters, every binary
  operator is intercepted and the optimizer is off;
* what prompts never need is refused outright: bytes (``encode``, every method and operator of
  bytes), format specs taking part of themselves from another field (``'{0:{1}}'``), and
  every filter and test but those of :mod:`kontext_pipeline.recipe._sandbox_names`.

Every refusal is a :class:`jinja2.exceptions.SecurityError`, which the renderer reports as
"refused by the template sandbox".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from kontext_pipeline.recipe._sandbox_budget import charge, step, write
from kontext_pipeline.recipe._sandbox_names import FILTERS, TESTS
from kontext_pipeline.recipe._sandbox_sizes import (
    FILTER_SIZES,
    MAX_VALUE,
    METHOD_SIZES,
    Namespace,
    deep_size,
    estimate,
    format_size,
    measure,
    measure_text,
    nested_spec,
    printf_size,
    size,
)

__all__ = ["MAX_EXPONENT", "MAX_REPEAT", "SandboxEnvironment", "guard_template", "weight"]

MAX_REPEAT = 10_000
"""The largest count of a repetition (``'ab' * n``)."""

MAX_EXPONENT = 64
"""The largest exponent of a power (``x ** n``)."""

_MAX_INT_BITS = 14_000
"""About 4,300 decimal digits: the most Python itself will print."""

VALUE_COST = 50
"""Units of work charged for each value measured (half a microsecond or so)."""

NODE_COST = 8
"""Units of work charged for each template node run (a tenth of a microsecond or so)."""

ITEM_COST = 100
"""Units of work charged for each item of a list or mapping a filter goes through (a filter
calls a test, a filter or an attribute lookup for each, or compares them to sort)."""

_FILTER_COST: Mapping[str, int] = {
    "wordwrap": 250, "title": 25, "indent": 10, "wordcount": 10, "list": 2,
}
"""Units of work per character or item of the input, for filters that take longer than
copying it (measured: ``title`` takes some 0.13 microseconds a character, ``wordwrap`` 0.25,
charged as ``urlize``, at two, once was)."""

_FILTER_WORK: Mapping[str, Callable[..., int]] = {
    "sum": lambda items, attribute=None, start=0, *_: size(items) * deep_size(items)
    if isinstance(start, list | tuple) else 0,
}
"""Work that grows faster than the input: adding up lists copies each partial sum."""

_LOOP = "_kontext_loop"
_VALUE = "_kontext_value"
_CONCAT = "_kontext_concat"
_OPERAND = "_kontext_operand"
_CHARGE = "_kontext_charge"
_WRITE = "_kontext_write"


def _too_big(what: str, amount: int) -> SecurityError:
    return SecurityError(f"{what} would make a value of {amount} characters or items; at most "
                         f"{MAX_VALUE} are allowed")


_BYTES = (bytes, bytearray)
_NO_BYTES = "{} is not available in templates: prompts are text, never bytes"
_NESTED_SPEC = ("a format spec cannot take part of itself from another field (as in "
                "'{0:>{1}}'); write the width as a number (as in '{0:>20}')")


def _refuse_over(what: str, amount: int) -> None:
    if amount > MAX_VALUE:
        raise _too_big(what, amount)


def _measured(value: Any) -> int:
    """The deep size of ``value``, its measuring charged."""
    amount, visited = measure(value)
    charge(amount + VALUE_COST * visited)
    return amount


def _text_measured(value: Any) -> int:
    """An upper bound of ``len(str(value))``, its measuring charged (not the text: whoever
    makes it charges that)."""
    amount, visited = measure_text(value)
    charge(VALUE_COST * visited)
    return amount


def _checked(what: str, value: Any) -> Any:
    """Refuse ``value`` when it (with all it holds) is too large; charge its size."""
    if _measured(value) > MAX_VALUE:  # measuring stops there: the value may be far larger
        raise SecurityError(f"{what} would make a value of more than {MAX_VALUE} characters "
                            "or items")
    if _is_int(value) and value.bit_length() > _MAX_INT_BITS:
        raise SecurityError(f"{what} would make a number of more than 4300 digits")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _guard_filter(name: str, jinja: jinja2.Environment) -> Callable[..., Any]:
    """Jinja's filter ``name`` (run through ``jinja``, which passes it what it asks for: the
    context, the evaluation context or the environment), counted and bounded, as a context
    filter: Jinja never runs one of those while compiling."""

    @jinja2.pass_context
    def guarded(context: jinja2.runtime.Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        step()
        _refuse_over(f"the filter '{name}'", estimate(FILTER_SIZES, name, (value, *args), kwargs))
        amount, visited = measure(value)  # the input: measured, then read (once, or item by item)
        items = 0 if isinstance(value, str) else size(value)
        charge(_FILTER_COST.get(name, 1) * amount + VALUE_COST * visited + ITEM_COST * items)
        charge(estimate(_FILTER_WORK, name, (value, *args), kwargs))
        result = jinja.call_filter(name, value, args, kwargs, context=context)
        return _checked(f"the filter '{name}'", result)

    guarded.__name__ = guarded.__qualname__ = f"guarded_{name}"
    return guarded


def _count_loop(iterable: Any) -> Iterator[Any]:
    for item in iterable:
        step()
        yield item


@jinja2.pass_context
def _value(_context: Any, value: Any, what: str) -> Any:
    return _checked(what, value)


@jinja2.pass_context
def _concat(_context: Any, parts: tuple[Any, ...]) -> str:
    """``a ~ b ~ …``, measured before it is joined."""
    total = sum(_text_measured(part) for part in parts)
    _refuse_over("joining text with '~'", total)
    charge(total)
    return "".join(part if isinstance(part, str) else str(part) for part in parts)


@jinja2.pass_context
def _operand(_context: Any, value: Any) -> Any:
    """A compared value: comparing reads it whole."""
    _measured(value)
    return value


@jinja2.pass_context
def _charge(_context: Any, work: int) -> str:
    charge(work)
    return ""


@jinja2.pass_context  # a context filter is never run at compile time, so everything counts
def _write(_context: Any, value: Any) -> Any:
    return value


def _finalize(value: Any) -> Any:
    """Count what a render writes (every ``{{ … }}`` and, through :func:`_write`, literal
    text) before it is turned into text."""
    if not isinstance(value, jinja2.Undefined):
        write(_text_measured(value))
    return value


class SandboxEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with StrictUndefined and the bounds of this module. Templates
    must go through :func:`guard_template` before they are compiled."""

    intercepted_binops = frozenset(["*", "**", "%", "+", "-", "/", "//"])

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False,
                         finalize=_finalize, optimized=False)
        # Jinja's own filters run in a sandbox of their own: one that passes the environment
        # (``sort``, ``sum``…) looks attributes up through it, so it must be sandboxed too.
        jinja = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
        self.jinja_filters = frozenset(self.filters)
        self.jinja_tests = frozenset(self.tests)
        self.filters = {name: _guard_filter(name, jinja) for name in sorted(FILTERS)}
        self.filters.update({_LOOP: _count_loop, _VALUE: _value, _CONCAT: _concat,
                             _OPERAND: _operand, _CHARGE: _charge, _WRITE: _write})
        self.tests = {name: test for name, test in self.tests.items() if name in TESTS}
        self.globals["namespace"] = Namespace
        del self.globals["lipsum"]  # random text: a prompt must render the same every time

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any,
                   right: Any) -> Any:
        if isinstance(left, _BYTES) or isinstance(right, _BYTES):
            raise SecurityError(_NO_BYTES.format(f"'{operator}' on bytes"))
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "+" and not (_is_number(left) and _is_number(right)):
            _refuse_over("'+'", deep_size(left) + deep_size(right))
        elif operator == "%" and isinstance(left, str):
            args = list(right.values()) if isinstance(right, dict) else (
                list(right) if isinstance(right, tuple) else [right])
            _refuse_over("'%' formatting", printf_size(left, args))
        result = super().call_binop(context, operator, left, right)
        return _checked(f"'{operator}'", result)

    def call(__self, __context: jinja2.runtime.Context,  # noqa: N805  (Jinja's signature)
             __obj: Any, *args: Any, **kwargs: Any) -> Any:
        step()
        method = getattr(__obj, "__wrapped__", __obj)  # str.format is wrapped by the sandbox
        owner = getattr(method, "__self__", None)
        name = getattr(method, "__name__", "")
        if isinstance(__obj, type):  # namespace(…), dict(…), cycler(…)
            name = name.lower()
        charge(VALUE_COST + size(owner) + sum(size(a) for a in args))
        if isinstance(owner, _BYTES) or (isinstance(owner, type) and issubclass(owner, _BYTES)):
            raise SecurityError(_NO_BYTES.format(f"'{name}' of bytes"))
        if isinstance(owner, str):
            if name == "encode":
                raise SecurityError(_NO_BYTES.format("'encode'"))
            if name in ("format", "format_map"):
                if nested_spec(owner):
                    raise SecurityError(_NESTED_SPEC)
                values = [*args, *kwargs.values()]
                if name == "format_map" and args and isinstance(args[0], dict):
                    values = list(args[0].values())
                amount = format_size(owner, values)
            else:
                amount = estimate(METHOD_SIZES, name, (owner, *args), kwargs)
            _refuse_over(f"'{name}'", amount)
        elif isinstance(owner, type) and name == "fromkeys" and args:  # {}.fromkeys(keys, v)
            _refuse_over("'fromkeys'", size(args[0]) * (1 + deep_size(args[1:])))
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
    _refuse_over(f"repeating a value {count} times", deep_size(value) * max(0, int(count)))


def weight(node: nodes.Node) -> int:
    """What running ``node`` once costs at the least: :data:`NODE_COST` for each node in it."""
    return NODE_COST * (1 + sum(1 for _ in node.find_all(nodes.Node)))


def _filtered(node: nodes.Node, name: str, *args: Any) -> nodes.Filter:
    return nodes.Filter(node, name, [nodes.Const(a, lineno=node.lineno) for a in args], [],
                        None, None, lineno=node.lineno)


def _charged(body: list[nodes.Node], lineno: int) -> list[nodes.Node]:
    """``body``, first charging its size on every run (a loop's iteration, a macro's call)."""
    cost = sum(weight(child) for child in body)
    return [nodes.ExprStmt(_filtered(nodes.Const(cost, lineno=lineno), _CHARGE),
                           lineno=lineno), *body]


_LITERALS = {nodes.List: "building a list", nodes.Tuple: "building a tuple",
             nodes.Dict: "building a mapping"}


class _Guard(NodeTransformer):
    """Counts loop iterations and the work of bodies, measures ``~``, literals, slices and
    compared values, and makes everything a template writes count as written."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802  (Jinja's visitor names)
        self.generic_visit(node)
        node.iter = _filtered(node.iter, _LOOP)
        node.body = _charged(node.body, node.lineno)
        return node

    def _visit_body(self, node: nodes.Macro | nodes.CallBlock | nodes.Block) -> nodes.Node:
        """A macro's, a call block's or a block's body: charged on every run of it."""
        self.generic_visit(node)
        node.body = _charged(node.body, node.lineno)
        return node

    visit_Macro = visit_CallBlock = visit_Block = _visit_body  # noqa: N815  (Jinja's names)

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return _filtered(nodes.Tuple(node.nodes, "load", lineno=node.lineno), _CONCAT)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        node.expr = _filtered(node.expr, _OPERAND)
        for operand in node.ops:
            operand.expr = _filtered(operand.expr, _OPERAND)
        return node

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        if isinstance(node.arg, nodes.Slice):
            return _filtered(node, _VALUE, "a slice")
        return node

    def visit_List(self, node: nodes.List) -> nodes.Node:  # noqa: N802
        return self._literal(node)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Node:  # noqa: N802
        if node.ctx != "load":  # a target: ``{% for a, b in … %}``
            self.generic_visit(node)
            return node
        return self._literal(node)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Node:  # noqa: N802
        return self._literal(node)

    def _literal(self, node: nodes.List | nodes.Tuple | nodes.Dict) -> nodes.Node:
        self.generic_visit(node)
        return _filtered(node, _VALUE, _LITERALS[type(node)])

    def visit_Output(self, node: nodes.Output) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        node.nodes = [_filtered(nodes.Const(child.data, lineno=child.lineno)
                                if isinstance(child, nodes.TemplateData) else child, _WRITE)
                      for child in node.nodes]
        return node


def guard_template(template: nodes.Template) -> nodes.Template:
    """Prepare a parsed template for :class:`SandboxEnvironment` (changes it in place)."""
    _Guard().visit(template)
    return template
