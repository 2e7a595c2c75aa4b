"""Matrix expansion follows GitHub Actions: product, then exclude, then include."""

from __future__ import annotations

from typing import Any

from kontext_pipeline.findings import Findings
from kontext_pipeline.matrix import DEFAULT_VARIANT, Variant, expand_matrix, format_value
from kontext_pipeline.yamlsource import Document


def expand(matrix: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[str]]:
    findings = Findings("recipe.yaml", Document({"matrix": matrix}))
    variants = expand_matrix(matrix, findings)
    return [dict(v.values) for v in variants], [p.format() for p in findings.sorted()]


def test_no_matrix_is_one_default_variant() -> None:
    variants, problems = expand(None)
    assert variants == [{}]
    assert problems == []
    assert Variant.of({}).id == DEFAULT_VARIANT


def test_product_keeps_key_order() -> None:
    variants, _ = expand({"color": ["red", "blue"], "size": [1, 2]})
    assert variants == [
        {"color": "red", "size": 1},
        {"color": "red", "size": 2},
        {"color": "blue", "size": 1},
        {"color": "blue", "size": 2},
    ]


def test_the_github_documentation_example() -> None:
    # The example of "Expanding or adding matrix configurations" in GitHub's workflow syntax.
    variants, problems = expand({
        "fruit": ["apple", "pear"],
        "animal": ["cat", "dog"],
        "include": [
            {"color": "green"},
            {"color": "pink", "animal": "cat"},
            {"fruit": "apple", "shape": "circle"},
            {"fruit": "banana"},
            {"fruit": "banana", "animal": "cat"},
        ],
    })
    assert problems == []
    assert variants == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_exclude_then_include() -> None:
    variants, problems = expand({
        "os": ["linux", "mac"],
        "size": ["s", "l"],
        "exclude": [{"os": "mac", "size": "l"}],
        "include": [{"os": "mac", "size": "l", "extra": True}],
    })
    assert problems == []
    assert variants == [
        {"os": "linux", "size": "s"},
        {"os": "linux", "size": "l"},
        {"os": "mac", "size": "s"},
        {"os": "mac", "size": "l", "extra": True},
    ]


def test_include_only_matrix() -> None:
    variants, _ = expand({"include": [{"color": "red"}, {"color": "blue", "shade": "dark"}]})
    assert variants == [{"color": "red"}, {"color": "blue", "shade": "dark"}]


def test_exclude_that_matches_nothing_is_a_warning() -> None:
    _, problems = expand({"color": ["red"], "exclude": [{"color": "green"}]})
    assert problems == ["recipe.yaml:1:1: warning: matrix.exclude[0]: excludes no combination"]


def test_variant_ids_format_values_as_json_except_text() -> None:
    assert Variant.of({"color": "red", "hd": True, "n": 2, "x": 1.5}).id == (
        "color=red,hd=true,n=2,x=1.5")
    assert format_value(False) == "false"


def test_a_matrix_of_more_than_256_combinations_is_refused_before_it_is_made() -> None:
    variants, problems = expand({f"k{i}": list(range(10)) for i in range(12)})
    assert variants == []
    assert problems == ["recipe.yaml:1:1: matrix: the matrix makes 1000000000000 combinations; "
                        "at most 256 are allowed: split it into several recipes"]
    variants, problems = expand({"a": list(range(16)), "b": list(range(16))})
    assert len(variants) == 256
    assert problems == []
