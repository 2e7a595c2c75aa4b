"""The filters and tests prompt templates may use: an allow-list of Jinja's, so that what a
template can reach is only what prompts need (see :mod:`kontext_pipeline.recipe._sandbox`)."""

from __future__ import annotations

__all__ = ["FILTERS", "TESTS"]

FILTERS = frozenset({
    # text
    "capitalize", "center", "format", "indent", "lower", "replace", "string", "title", "trim",
    "truncate", "upper", "wordcount", "wordwrap",
    # values
    "abs", "d", "default", "float", "int", "round",
    # lists and mappings
    "count", "dictsort", "first", "items", "join", "last", "length", "list", "map", "max", "min",
    "reject", "rejectattr", "reverse", "select", "selectattr", "sort", "sum", "unique",
})
"""The filters prompt templates may use: Jinja's, less those for HTML, URLs, JSON and debugging
(``escape``, ``urlize``, ``tojson``, ``pprint``…), ``random`` (a prompt renders the same every
time, or its cache key would not hold) and the rarely useful (``batch``, ``slice``,
``groupby``, ``attr``). A filter whose result can outgrow its input has a bound in
:data:`._sandbox_sizes.FILTER_SIZES`; every result is measured after."""

TESTS = frozenset({
    "boolean", "defined", "divisibleby", "even", "false", "float", "in", "integer", "iterable",
    "lower", "mapping", "none", "number", "odd", "sameas", "sequence", "string", "true",
    "undefined", "upper",
    "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan",
    ">", "ge", ">=",
})
"""The tests (``x is …``) prompt templates may use: Jinja's, less ``callable``, ``escaped``,
``filter`` and ``test``."""
