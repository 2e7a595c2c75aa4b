"""What prompt templates can reach: an allow-list of Jinja's filters and tests, each refused
otherwise at its line with the list; every allowed one working, and bounded when its result can
outgrow its input; and nothing private of Jinja's (or any other package's) used to do it."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest

from kontext_pipeline.recipe._sandbox_names import FILTERS, TESTS
from kontext_pipeline.recipe._sandbox_sizes import FILTER_SIZES
from kontext_pipeline.recipe._templating import Prompt, RenderError

ROOT = Path(__file__).resolve().parent.parent
JINJA = jinja2.Environment(autoescape=True)  # only its tables of filters and tests are read
DEFAULT_FILTERS, DEFAULT_TESTS = JINJA.filters, JINJA.tests
FILTER_LIST = ("abs, capitalize, center, count, d, default, dictsort, first, float, format, "
               "indent, int, items, join, last, length, list, lower, map, max, min, reject, "
               "rejectattr, replace, reverse, round, select, selectattr, sort, string, sum, "
               "title, trim, truncate, unique, upper, wordcount, wordwrap")
TEST_LIST = ("!=, <, <=, ==, >, >=, boolean, defined, divisibleby, eq, equalto, even, false, "
             "float, ge, greaterthan, gt, in, integer, iterable, le, lessthan, lower, lt, mapping, "
             "ne, none, number, odd, sameas, sequence, string, true, undefined, upper")


def compile_error(source: str) -> RenderError:
    with pytest.raises(RenderError) as caught:
        Prompt(source)
    return caught.value


def render_error(source: str, **context: Any) -> RenderError:
    with pytest.raises(RenderError) as caught:
        Prompt(source).render(context)
    return caught.value


def test_the_lists_are_jinjas_own_names() -> None:
    assert sorted(FILTERS) == FILTER_LIST.split(", ")
    assert sorted(TESTS) == TEST_LIST.split(", ")
    assert set(DEFAULT_FILTERS) >= FILTERS
    assert set(DEFAULT_TESTS) >= TESTS


@pytest.mark.parametrize("name", sorted(set(DEFAULT_FILTERS) - FILTERS))
def test_a_filter_outside_the_list_is_refused_at_its_line_even_where_no_render_goes(
        name: str) -> None:
    error = compile_error(f"Say\n{{% if false %}}{{{{ 'x' | {name} }}}}{{% endif %}}")
    assert error.message == (f"the filter '{name}' is not available in prompt templates; use one "
                             f"of: {FILTER_LIST}")
    assert error.line == 2


@pytest.mark.parametrize("name", sorted(set(DEFAULT_TESTS) - TESTS))
def test_a_test_outside_the_list_is_refused_at_its_line(name: str) -> None:
    error = compile_error(f"Say\n\n{{{{ 'x' is {name} }}}}")
    assert error.message == (f"the test '{name}' is not available in prompt templates; use one "
                             f"of: {TEST_LIST}")
    assert error.line == 3


def test_a_near_miss_gets_a_did_you_mean_and_anything_else_the_list() -> None:
    assert compile_error("{{ slogan | uppr }}").message == (
        "unknown filter 'uppr' (did you mean 'upper'?)")
    assert compile_error("{% if x is strng %}y{% endif %}").message == (
        "unknown test 'strng' (did you mean 'string'?)")
    assert compile_error("{{ slogan | qqqqzz }}").message == (
        f"unknown filter 'qqqqzz'; use one of: {FILTER_LIST}")
    assert compile_error("{{ slogan is qqqqzz }}").message == (
        f"unknown test 'qqqqzz'; use one of: {TEST_LIST}")


def test_the_sandboxs_own_filters_are_not_the_templates() -> None:
    assert compile_error("{{ 5 | _kontext_charge }}x").message == (
        f"unknown filter '_kontext_charge'; use one of: {FILTER_LIST}")


@pytest.mark.parametrize(("source", "message"), [
    ("{{ words | map('urlize') | join }}",
     f"the filter 'urlize' is not available in prompt templates; use one of: {FILTER_LIST}"),
    ("{{ words | select('callable') | join }}",
     f"the test 'callable' is not available in prompt templates; use one of: {TEST_LIST}"),
    ("{{ words | reject('emtpy') | join }}", f"unknown test 'emtpy'; use one of: {TEST_LIST}"),
    ("{{ words | map('uper') | join }}", "unknown filter 'uper' (did you mean 'upper'?)"),
])
def test_a_name_given_to_map_or_select_is_checked_when_the_render_reaches_it(
        source: str, message: str) -> None:
    error = render_error("Say\n" + source, words=["a"])
    assert (error.message, error.line) == (message, 2)


ALLOWED = [
    ("abs", "{{ -3 | abs }}", "3"),
    ("capitalize", "{{ 'red car' | capitalize }}", "Red car"),
    ("center", "[{{ 'ab' | center(6) }}]", "[  ab  ]"),
    ("count", "{{ words | count }}", "3"),
    ("d", "{{ missing | d('none') }}", "none"),
    ("default", "{{ missing | default('none') }}", "none"),
    ("dictsort", "{{ {'b': 1, 'a': 2} | dictsort | first | first }}", "a"),
    ("first", "{{ words | first }}", "red"),
    ("float", "{{ '2.5' | float }}", "2.5"),
    ("format", "{{ '%s-%03d' | format('a', 7) }}", "a-007"),
    ("indent", "{{ 'a\nb' | indent(2) }}", "a\n  b"),
    ("int", "{{ '42' | int + 1 }}", "43"),
    ("items", "{% for k, v in {'a': 1} | items %}{{ k }}={{ v }}{% endfor %}", "a=1"),
    ("join", "{{ words | join(', ') }}", "red, green, blue"),
    ("last", "{{ words | last }}", "blue"),
    ("length", "{{ words | length }}", "3"),
    ("list", "{{ 'ab' | list }}", "['a', 'b']"),
    ("lower", "{{ 'RED' | lower }}", "red"),
    ("map", "{{ words | map('upper') | join(' ') }}", "RED GREEN BLUE"),
    ("max", "{{ words | max }}", "red"),
    ("min", "{{ words | min }}", "blue"),
    ("reject", "{{ [1, 2, 3] | reject('odd') | join }}", "2"),
    ("rejectattr", "{{ cars | rejectattr('fast') | map(attribute='name') | join }}", "van"),
    ("replace", "{{ 'a-b' | replace('-', ' and ') }}", "a and b"),
    ("reverse", "{{ words | reverse | join(' ') }}", "blue green red"),
    ("round", "{{ 2.567 | round(1) }}", "2.6"),
    ("select", "{{ [1, 2, 3] | select('odd') | join }}", "13"),
    ("selectattr", "{{ cars | selectattr('fast') | map(attribute='name') | join }}", "coupe"),
    ("sort", "{{ cars | sort(attribute='name') | map(attribute='name') | join(' ') }}",
     "coupe van"),
    ("string", "{{ 12 | string ~ 'x' }}", "12x"),
    ("sum", "{{ cars | sum(attribute='seats') }}", "10"),
    ("title", "{{ 'red car' | title }}", "Red Car"),
    ("trim", "[{{ '  a  ' | trim }}]", "[a]"),
    ("truncate", "{{ 'one two three four' | truncate(9, leeway=0) }}", "one..."),
    ("unique", "{{ ['a', 'A', 'b'] | unique | join }}", "ab"),
    ("upper", "{{ 'red' | upper }}", "RED"),
    ("wordcount", "{{ 'one two three' | wordcount }}", "3"),
    ("wordwrap", "{{ 'one two three' | wordwrap(5) | replace('\n', '/') }}", "one/two/three"),
]


@pytest.mark.parametrize(("name", "source", "expected"), ALLOWED,
                         ids=[name for name, _, _ in ALLOWED])
def test_every_allowed_filter_works(name: str, source: str, expected: str) -> None:
    cars = [{"name": "van", "fast": False, "seats": 8}, {"name": "coupe", "fast": True,
                                                          "seats": 2}]
    assert f"| {name}" in source
    assert Prompt(source).render({"words": ["red", "green", "blue"], "cars": cars}) == expected


def test_every_allowed_filter_has_a_case_above() -> None:
    assert {name for name, _, _ in ALLOWED} == FILTERS


@pytest.mark.parametrize("source", [
    "{{ words | sort(attribute='__class__') | join }}",
    "{{ words | unique(attribute='__class__') | join }}",
    "{{ words | min(attribute='__class__') }}",
    "{{ words | sum(attribute='__class__') }}",
    "{{ words | map(attribute='__class__') | join }}",
    "{{ words | selectattr('__class__') | join }}",
])
def test_filters_that_look_attributes_up_do_it_in_the_sandbox(source: str) -> None:
    error = render_error(source, words=["red", "blue"])
    assert error.message == ("refused by the template sandbox: access to attribute '__class__' "
                             "of 'str' object is unsafe.")


def test_a_namespace_shows_only_what_the_template_set_on_it() -> None:
    prompt = "{% set ns = namespace(a=1) %}{% set ns.b = ns.a + 1 %}{{ ns.b }} {{ ns }}"
    assert Prompt(prompt).render({}) == "2 <Namespace {'a': 1, 'b': 2}>"
    for name in ("_kontext_values", "_Namespace__attrs", "items"):
        error = render_error(f"{{% set ns = namespace(a=1) %}}{{{{ ns.{name} }}}}")
        assert error.message == f"a namespace has no attribute or key '{name}'"
    assert render_error("{% set ns = namespace() %}{{ ns.__class__ }}").message == (
        "refused by the template sandbox: access to attribute '__class__' of 'Namespace' object "
        "is unsafe.")


# what a filter makes no more than it is given: a number, an item, the items in another order
# or fewer of them (and what every filter makes is measured after, too)
NO_LARGER = {"abs", "count", "d", "default", "dictsort", "first", "float", "int", "items",
             "last", "length", "map", "max", "min", "reject", "rejectattr", "reverse", "round",
             "select", "selectattr", "sort", "sum", "unique"}


def test_every_allowed_filter_that_can_outgrow_its_input_has_a_bound() -> None:
    assert set(FILTER_SIZES) <= FILTERS  # no bound left for a filter templates cannot use
    assert FILTERS - set(FILTER_SIZES) == NO_LARGER


def test_the_recipe_reference_lists_exactly_the_allowed_filters_and_tests() -> None:
    text = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| ([a-z (`…)]+) \| (.+) \|$", text, flags=re.MULTILINE))
    filters = " ".join(v for k, v in rows.items() if k.endswith("filters"))
    tests = rows["tests (`x is …`)"]
    assert set(re.findall(r"`([^`]+)`", filters)) == FILTERS
    assert set(re.findall(r"`([^`]+)`", tests)) == TESTS


def private_names(tree: ast.AST, modules: set[str]) -> list[str]:
    """``from x import _y`` and ``x._y`` where ``x`` is another package's module."""
    found = []
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in modules:
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"from {node.module} import …")
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                if alias.name.startswith("_"):
                    found.append(f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in modules:
                    imported[alias.asname or alias.name.split(".")[0]] = alias.name
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(f"import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in imported and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            found.append(f"{imported[node.value.id]}.{node.attr}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"_[A-Z]\w*__\w+", node.value):
            found.append(f"the name-mangled attribute {node.value}")
    return found


def test_the_package_uses_nothing_private_of_another_package() -> None:
    found = {}
    for path in sorted((ROOT / "kontext_pipeline").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {alias.name.split(".")[0] for node in ast.walk(tree)
                   if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        names = private_names(tree, modules - set(sys.stdlib_module_names) - {"kontext_pipeline"})
        if names:
            found[str(path.relative_to(ROOT))] = names
    assert found == {}


def test_the_private_name_finder_finds_them() -> None:
    source = ("from jinja2.utils import _PassArg\nimport jinja2\nx = jinja2._internal\n"
              "y = object.__getattribute__(v, '_Namespace__attrs')\n"
              "from kontext_pipeline import _a\n")
    assert private_names(ast.parse(source), {"jinja2"}) == [
        "from jinja2.utils import _PassArg", "jinja2._internal",
        "the name-mangled attribute _Namespace__attrs"]
