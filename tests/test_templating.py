"""The sandboxed template environment: strict, immutable, bounded, and blind to secrets."""

from __future__ import annotations

from typing import Any

import pytest

from kontext_pipeline.recipe._templating import (
    MAX_PROMPT_CHARS,
    Prompt,
    RenderError,
    StepTemplate,
    VariantContext,
    base_context,
    is_secret_name,
    render_steps,
    template_environ,
)


def render(source: str, **context: Any) -> str:
    return Prompt(source).render(context)


def render_error(source: str, **context: Any) -> RenderError:
    with pytest.raises(RenderError) as caught:
        render(source, **context)
    return caught.value


def test_renders_and_strips() -> None:
    assert render("  Make it {{ color | upper }}\n", color="blue") == "Make it BLUE"


def test_undefined_name_is_an_error_not_an_empty_string() -> None:
    error = render_error("Make it\n{{ colour }}", color="blue")
    assert error.message == "undefined variable 'colour'"
    assert error.line == 2


def test_missing_attribute_is_worded_plainly() -> None:
    error = render_error("{{ steps.first.prompt }}", steps={})
    assert error.message == "a mapping has no attribute or key 'first'"


def test_a_message_holding_a_long_name_is_cut_short() -> None:
    error = render_error("{{ env[('x' * 10000) * 10] }}", env={})
    assert error.message == "a mapping has no attribute or key '" + "x" * 964 + "…"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
])
def test_python_internals_are_refused(source: str) -> None:
    error = render_error(source)
    assert error.message.startswith("refused by the template sandbox: access to attribute ")
    assert error.message.endswith(" is unsafe.")


def test_context_cannot_be_mutated() -> None:
    items = ["a"]
    error = render_error("{{ items.append('b') }}", items=items)
    assert error.message.startswith("refused by the template sandbox: ")
    assert items == ["a"]


def test_huge_exponent_is_refused() -> None:
    error = render_error("{{ 9 ** 99999999 }}")
    assert error.message == ("refused by the template sandbox: exponent 99999999 is too large "
                             "(at most 64)")


def test_huge_repetition_is_refused_both_ways() -> None:
    for source in ("{{ 'ab' * 10000000 }}", "{{ 10000000 * 'ab' }}"):
        assert render_error(source).message == (
            "refused by the template sandbox: repeating a value 10000000 times is too much "
            "(at most 10000)")


@pytest.mark.parametrize(("source", "what"), [
    ("{{ text.encode() }}", "'encode'"),
    ("{{ data * 3 }}", "'*' on bytes"),
    ("{{ 3 * data }}", "'*' on bytes"),
    ("{{ data % data }}", "'%' on bytes"),
    ("{{ data ~ '' ~ (data + data) }}", "'+' on bytes"),
    ("{{ data.center(9) }}", "'center' of bytes"),
    ("{{ data.fromhex('00') }}", "'fromhex' of bytes"),
])
def test_bytes_are_refused_outright(source: str, what: str) -> None:
    """Prompts are text: bytes (which only ``encode`` could make) have no bounds of their own."""
    assert render_error(source, text="x", data=b"x").message == (
        f"refused by the template sandbox: {what} is not available in templates: prompts are "
        "text, never bytes")


def test_format_fields_nested_in_a_spec_are_refused_and_plain_widths_work() -> None:
    assert render_error("{{ '{0:>{1}}'.format('x', 3) }}").message == (
        "refused by the template sandbox: a format spec cannot take part of itself from another "
        "field (as in '{0:>{1}}'); write the width as a number (as in '{0:>20}')")
    assert render("{{ '[{0:>3}|{1:*^5}]'.format('x', 'y') }}") == "[  x|**y**]"


def test_small_arithmetic_still_works() -> None:
    assert render("{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 6 * 7 }}") == "1024 ababab 42"


def test_overlong_prompt_is_refused() -> None:
    error = render_error("{% for i in range(3000) %}word {% endfor %}")
    assert error.message == (f"the rendered prompt is 14999 characters long; at most "
                             f"{MAX_PROMPT_CHARS} are allowed")


def test_empty_prompt_is_refused() -> None:
    assert render_error("{{ '' }}  ").message == "the rendered prompt is empty"


def test_runtime_exceptions_become_render_errors_with_their_line() -> None:
    error = render_error("one\ntwo {{ 1 / n }}", n=0)
    assert error.message == "ZeroDivisionError: division by zero"
    assert error.line == 2


def test_syntax_errors_carry_the_line() -> None:
    with pytest.raises(RenderError) as caught:
        Prompt("fine\n{% if x %}never closed")
    assert caught.value.message == ("template syntax error: Unexpected end of template. Jinja "
                                    "was looking for the following tags: 'elif' or 'else' or "
                                    "'endif'. The innermost block that needs to be closed is "
                                    "'if'.")
    assert caught.value.line == 2


def test_names_and_attributes_are_found_statically() -> None:
    prompt = Prompt("{% set local = 1 %}{{ color }}\n{{ steps.first.prompt }} {{ inputs['car'] }}"
                    " {{ local }} {{ env.HOME }}")
    assert [(n.name, n.line) for n in prompt.names()] == [
        ("color", 1), ("steps", 2), ("inputs", 2), ("env", 2)]
    assert [(n.name, n.line) for n in prompt.attributes("steps")] == [("first", 2)]
    assert [n.name for n in prompt.attributes("inputs")] == ["car"]
    assert [n.name for n in prompt.attributes("env")] == ["HOME"]


@pytest.mark.parametrize(("name", "secret"), [
    ("BFL_API_KEY", True), ("GITHUB_TOKEN", True), ("aws_secret_access_key", True),
    ("DB_PASSWORD", True), ("PGPASSPHRASE", True), ("SESSION_ID", True),
    ("BROWSER_COOKIE", True), ("PRIVATE_CERT_PEM", True),
    ("HOME", False), ("USER", False), ("BRAND_COLOR", False),
])
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_templates_see_only_the_allowed_variables_and_never_secrets() -> None:
    environ = {"BFL_API_KEY": "bfl_secret", "BRAND": "acme", "DATABASE_URL": "postgres://u:p@db",
               "CI_JOB_JWT": "eyJhbGciOi", "KONTEXT_VAR_CAMPAIGN": "spring",
               "KONTEXT_VAR_API_KEY": "bfl_again", "HOME": "/root"}
    assert template_environ(environ) == {"KONTEXT_VAR_CAMPAIGN": "spring"}
    assert template_environ(environ, ("BRAND", "BFL_API_KEY", "UNSET")) == {
        "BRAND": "acme", "KONTEXT_VAR_CAMPAIGN": "spring"}


def test_render_steps_shows_earlier_steps_and_matrix_overrides_vars() -> None:
    steps = [
        StepTemplate("first", Prompt("Paint it {{ color }}"), 11, "flux-kontext-pro"),
        StepTemplate("second", Prompt("After '{{ steps.first.prompt }}' (seed "
                                      "{{ steps.first.seed }}) in {{ variant.id }}"),
                     12, "flux-kontext-max"),
    ]
    context = base_context(variables={"color": "red"},
                           variant=VariantContext("color=blue", {"color": "blue"}),
                           pipeline={"name": "p"}, inputs={}, env={})
    assert render_steps(steps, context) == [
        "Paint it blue",
        "After 'Paint it blue' (seed 11) in color=blue",
    ]


def test_a_failed_step_is_seen_empty_by_later_steps() -> None:
    steps = [
        StepTemplate("first", Prompt("{{ missing }}"), 1, "flux-kontext-pro"),
        StepTemplate("second", Prompt("x{{ steps.first.prompt }}"), 2, "flux-kontext-pro"),
    ]
    context = base_context(variables={}, variant=VariantContext("default", {}), pipeline={},
                           inputs={}, env={})
    first, second = render_steps(steps, context)
    assert isinstance(first, RenderError)
    assert second == "x"


@pytest.mark.parametrize(("source", "expected"), [
    ("[{{ '%05d' % 42 }}|{{ '%-4s' % 'ab' }}|{{ '%s-%s' % ('a', 'b') }}]", "[00042|ab  |a-b]"),
    ("[{{ '{:>6}|{:.2f}'.format('ab', 3.14159) }}]", "[    ab|3.14]"),
    ("[{{ 'ab' | center(6) }}|{{ 'ab'.ljust(4, '.') }}|{{ '7'.zfill(3) }}]", "[  ab  |ab..|007]"),
    ("[{{ words | join(', ') }}|{{ ', '.join(words) }}|{{ 'a-b' | replace('-', ' and ') }}]",
     "[red, blue|red, blue|a and b]"),
    ("[{{ 'one two three' | wordwrap(5) | replace('\n', '/') }}|{{ 'a\nb' | indent(2) }}]",
     "[one/two/three|a\n  b]"),
    ("[{{ words | map('upper') | list | length }}|{{ {'k': words} | dictsort | first }}]",
     "[2|('k', ['red', 'blue'])]"),
    ("[{% macro tag(w) %}<{{ w }}>{% endmacro %}{% for w in words %}{{ tag(w) }}{% endfor %}]",
     "[<red><blue>]"),
    ("[{{ (2 ** 64) * (2 ** 64) }}|{{ ('ab' ~ 'cd') * 2 }}|{{ [1, 2] + [3] }}]",
     "[340282366920938463463374607431768211456|abcdabcd|[1, 2, 3]]"),
    ("[{% for w in words %}{{ loop.index }}/{{ loop.length }}{{ loop.cycle(',', '') }}"
     "{% endfor %}]", "[1/2,2/2]"),
    ("{% for i in range(1500) %}{% for j in range(4) %}{% endfor %}{% endfor %}done", "done"),
    ("[{% macro box() %}<{{ caller() }}>{% endmacro %}{% call box() %}in{% endcall %}|"
     "{% filter upper %}up{% endfilter %}|{% block b %}blk{% endblock %}{{ self.b() }}]",
     "[<in>|UP|blkblk]"),
    ("[{% for x in [1, [2, [3]]] recursive %}{% if x is number %}{{ x }}{% else %}"
     "{{ loop(x) }}{% endif %}{% endfor %}]", "[123]"),
    ("[{% set ns = namespace(n=0) %}{% for w in words %}{% set ns.n = ns.n + w | length %}"
     "{% endfor %}{{ ns.n }}|{{ words[::-1] | join }}|{{ 'abc'[1:] }}|{{ (1, 'a') }}|"
     "{{ {'a': [1]} }}]", "[7|bluered|bc|(1, 'a')|{'a': [1]}]"),
    ("[{{ words == ['red', 'blue'] }}|{{ 'red' in words }}|{{ 10 // 3 }}|{{ 7 - 2 }}|"
     "{{ 7 / 2 }}|{{ 'n' ~ 1 ~ [2] ~ none }}]", "[True|True|3|5|3.5|n1[2]None]"),
])
def test_ordinary_templates_stay_within_the_sandbox_bounds(source: str, expected: str) -> None:
    assert render(source, words=["red", "blue"]) == expected


def test_the_bounds_are_per_render() -> None:
    prompt = Prompt("{% for i in range(6000) %}{% endfor %}x")
    assert [prompt.render({}) for _ in range(3)] == ["x", "x", "x"]


def test_a_misspelt_filter_or_test_gets_a_did_you_mean() -> None:
    with pytest.raises(RenderError) as caught:
        Prompt("Say\n{{ slogan | uppr }}")
    assert caught.value.message == "unknown filter 'uppr' (did you mean 'upper'?)"
    assert caught.value.line == 2
    with pytest.raises(RenderError) as caught:
        Prompt("{{ slogan | qqqqzz }}")
    assert caught.value.message.startswith("unknown filter 'qqqqzz'; use one of: abs, ")
    with pytest.raises(RenderError) as caught:  # in a branch no render takes, too
        Prompt("{% if slogan is strng %}yes{% endif %} no")
    assert caught.value.message == "unknown test 'strng' (did you mean 'string'?)"
    with pytest.raises(RenderError) as caught:
        Prompt("{{ slogan is lowr }}")
    assert caught.value.message == "unknown test 'lowr' (did you mean 'lower'?)"


def test_random_text_is_not_offered() -> None:
    """``lipsum`` writes random text: a prompt using it would render differently at validate,
    plan and run, and no cache key would hold."""
    error = render_error("{{ lipsum(1) }}")
    assert error.message == "undefined variable 'lipsum'"
