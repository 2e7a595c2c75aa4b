"""YAML loading: positions, safety, YAML 1.2-style scalars, bounded expansion."""

from __future__ import annotations

import textwrap

import pytest

from kontext_pipeline.recipe._yamlsource import MAX_SOURCE_BYTES, Position, parse_yaml


def parse(text: str) -> tuple[object, list[str]]:
    document, problems = parse_yaml(textwrap.dedent(text).lstrip(), "r.yaml")
    return (document.data if document else None), [p.format() for p in problems]


def test_positions_of_keys_and_values() -> None:
    document, problems = parse_yaml("a: 1\nsteps:\n  - id: x\n    prompt: 'hi'\n", "r.yaml")
    assert problems == []
    assert document is not None
    assert document.key_position(("steps",)) == Position(2, 1)
    assert document.value_position(("steps", 0)) == Position(3, 5)
    assert document.key_position(("steps", 0, "prompt")) == Position(4, 5)
    assert document.value_position(("steps", 0, "prompt")) == Position(4, 13, "'")
    # unknown paths fall back to the nearest enclosing value
    assert document.value_position(("steps", 0, "nope", 3)) == Position(3, 5)


def test_yaml_1_1_surprises_stay_text() -> None:
    data, problems = parse("""
        ratio: 16:9
        answer: no
        switch: on
        flag: true
        other: False
        when: 2024-05-01
        count: 3
        share: 0.5
    """)
    assert problems == []
    assert data == {"ratio": "16:9", "answer": "no", "switch": "on", "flag": True,
                    "other": False, "when": "2024-05-01", "count": 3, "share": 0.5}


def test_anchors_aliases_and_merge_keys_work() -> None:
    data, problems = parse("""
        base: &base {model: flux-kontext-max, seed: 3}
        step:
          <<: *base
          seed: 4
        list: [*base]
    """)
    assert problems == []
    assert data == {
        "base": {"model": "flux-kontext-max", "seed": 3},
        "step": {"model": "flux-kontext-max", "seed": 4},
        "list": [{"model": "flux-kontext-max", "seed": 3}],
    }


def test_every_duplicate_key_is_reported() -> None:
    data, problems = parse("""
        a: 1
        a: 2
        b: {c: 1, c: 2}
    """)
    assert data == {"a": 1, "b": {"c": 1}}
    assert problems == [
        "r.yaml:2:1: duplicate key 'a' (first defined at line 1); remove one of them",
        "r.yaml:3:11: duplicate key 'c' (first defined at line 3); remove one of them",
    ]


def test_complex_keys_are_refused() -> None:
    _, problems = parse("? [a, b]\n: 1\n")
    assert problems == ["r.yaml:1:3: keys must be plain text, not lists or mappings"]


def test_sets_and_binary_are_refused() -> None:
    _, problems = parse("""
        s: !!set {a, b}
        b: !!binary aGVsbG8=
    """)
    assert problems == [
        "r.yaml:1:4: YAML tag '!!set' is not allowed in a recipe",
        "r.yaml:2:4: YAML tag '!!binary' is not allowed in a recipe",
    ]


def test_oversized_source_is_refused_before_parsing() -> None:
    text = "a: '" + "x" * MAX_SOURCE_BYTES + "'\n"
    document, problems = parse_yaml(text, "r.yaml")
    assert document is None
    assert [p.format() for p in problems] == [
        f"r.yaml:1:1: the recipe is {len(text)} bytes; recipes are limited to "
        f"{MAX_SOURCE_BYTES} bytes"]


def test_deep_block_nesting_is_refused_not_a_crash() -> None:
    text = "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "end: 1\n"
    document, problems = parse_yaml(text, "r.yaml")
    assert document is None
    assert [p.message for p in problems] == ["nesting deeper than 50 levels"]


def test_control_characters_are_placed_and_named() -> None:
    document, problems = parse_yaml("a: 1\nb: x\x07y\n", "r.yaml")
    assert document is None
    assert [p.format() for p in problems] == [
        "r.yaml:2:5: character U+0007 is not allowed in YAML; remove it"]


def test_a_tag_on_a_key_is_refused_like_one_on_a_value() -> None:
    data, problems = parse("""
        !!python/name:os.system name: x
        ? !custom key
        : y
    """)
    assert problems == ["r.yaml:1:1: YAML tag '!!python/name:os.system' is not allowed in a recipe",
                        "r.yaml:2:3: YAML tag '!custom' is not allowed in a recipe"]
    assert data == {"name": "x", "key": "y"}


def test_a_number_too_long_to_read_is_refused() -> None:
    data, problems = parse("seed: 0x" + "f" * 200 + "\n")
    assert data is None
    assert problems == ["r.yaml:1:7: a number of 202 characters is too long; a recipe's numbers "
                        "have at most 100"]


def test_a_bare_document_marker_is_an_empty_recipe() -> None:
    assert parse("---\n...\n") == (None, ["r.yaml:1:1: the recipe is empty; start with "
                                          "'version: 1'"])


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("name: x\nsteps:\n  - id: a\n    prompt: x\n  seed: 3\n", [
        "r.yaml:5:3: the indentation of this line does not match the lines above it: indent "
        "'seed' to column 5, like 'prompt' on line 4"], id="a-key-at-a-list-s-column"),
    pytest.param("name: x\nvars:\n    color: red\n  slogan: hi\n", [
        "r.yaml:4:3: the indentation of this line does not match the lines above it: indent "
        "'slogan' to column 5, like 'color' on line 3"], id="a-key-less-indented"),
    pytest.param("name: x\n  steps: y\n", [
        "r.yaml:2:3: the indentation of this line does not match the lines above it: indent "
        "'steps' to column 1, like 'name' on line 1"], id="a-key-more-indented"),
    pytest.param("name: x\nsteps:\n- id: a\n  - id: b\n", [
        "r.yaml:4:3: the indentation of this line does not match the lines above it: indent "
        "this '-' to column 1, like the '-' on line 3"], id="a-list-item"),
    pytest.param("prompt: say @home\n", [], id="an-at-sign-inside-a-value-is-text"),
    pytest.param("prompt: @home\n", [
        "r.yaml:1:9: a value cannot start with '@' in YAML; put the value in quotes"],
        id="a-value-starting-with-an-at-sign"),
    pytest.param("prompt: *ref\n", [
        "r.yaml:1:9: '*ref' refers to an anchor '&ref' that is not defined above it; define "
        "the anchor first, or put the value in quotes if '*' is part of the text"],
        id="an-undefined-alias"),
    pytest.param("image: {a: b\nprompt: x\n", [
        "r.yaml:1:8: this '{' is never closed; close it with '}', or put the value in quotes "
        "if the '{' is part of the text"], id="an-unclosed-brace"),
    pytest.param("prompt: 'it's red'\n", [
        "r.yaml:1:13: text after the closing \"'\": a quoted value ends at its second \"'\"; "
        "put double quotes around the whole value, or write \"''\" for each \"'\" inside it"],
        id="text-after-a-single-quote"),
    pytest.param("prompt: 'never closed\n", [
        "r.yaml:1:9: this ' is never closed; end the value with a matching '"],
        id="an-unclosed-single-quote"),
    pytest.param("prompt: Make it: " + "x" * 60 + "\n", [
        "r.yaml:1:16: ': ' in a value that is not in quotes reads as another key; put the "
        "whole value in quotes (prompt: \"…\")"], id="a-long-value-with-a-colon"),
    pytest.param("a: !!binary |\n  %%%\nb: [x, y\n", [
        "r.yaml:3:4: this '[' is never closed; close it with ']', or put the value in quotes "
        "if the '[' is part of the text"], id="an-unclosed-bracket-after-a-block"),
    pytest.param("a: b\n? [x\n", [
        "r.yaml:2:3: this '[' is never closed; close it with ']', or put the value in quotes "
        "if the '[' is part of the text"], id="an-unclosed-bracket-in-a-key"),
    pytest.param("a: &x 1\nb: &x 2\n", [
        "r.yaml:2:4: anchor '&x' is defined twice (first on line 1); rename one of them"],
        id="a-duplicate-anchor"),
    pytest.param("a: 1\n...\nb: 2\n", [
        "r.yaml:3:1: YAML syntax error: expected '<document start>', but found "
        "'<block mapping start>'"], id="another-error-keeps-pyyaml-s-words"),
])
def test_syntax_errors_are_advice_at_the_place_to_fix(text: str, expected: list[str]) -> None:
    _, problems = parse_yaml(text, "r.yaml")
    assert [p.format() for p in problems] == expected
