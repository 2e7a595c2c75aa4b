"""Matrix expansion follows GitHub Actions: product, then exclude, then include."""

from __future__ import annotations

import itertools
import random
from typing import Any

from kontext_pipeline.recipe._findings import Findings
from kontext_pipeline.recipe._matrix import DEFAULT_VARIANT, Variant, expand_matrix, format_value
from kontext_pipeline.recipe._yamlsource import Document


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


def test_lists_of_more_than_65536_combinations_are_refused_before_they_are_made() -> None:
    variants, problems = expand({f"k{i}": list(range(10)) for i in range(12)})
    assert variants == []
    assert problems == ["recipe.yaml:1:1: matrix: the matrix's lists make 1000000000000 "
                        "combinations before `exclude`; at most 65536 are allowed, and at most "
                        "256 variants after it: split it into several recipes"]
    variants, problems = expand({"a": list(range(16)), "b": list(range(16))})
    assert len(variants) == 256
    assert problems == []


def test_the_256_variant_limit_counts_the_variants_after_exclude() -> None:
    # 17 x 16 = 272 combinations; excluding the 16 with a=0 leaves exactly 256
    matrix: dict[str, Any] = {"a": list(range(17)), "b": list(range(16)),
                              "exclude": [{"a": 0}]}
    variants, problems = expand(matrix)
    assert problems == []
    assert len(variants) == 256
    assert variants[0] == {"a": 1, "b": 0}
    assert variants[-1] == {"a": 16, "b": 15}
    matrix["exclude"] = [{"a": 0, "b": b} for b in range(15)]
    variants, problems = expand(matrix)
    assert variants == []
    assert problems == ["recipe.yaml:1:1: matrix: the matrix makes 257 variants after "
                        "`exclude`; at most 256 are allowed: split it into several recipes"]


def test_the_256_variant_limit_counts_the_variants_include_adds() -> None:
    matrix: dict[str, Any] = {"a": list(range(16)), "b": list(range(16)),
                              "exclude": [{"a": 0, "b": 0}], "include": [{"a": 99}]}
    variants, problems = expand(matrix)
    assert problems == []
    assert len(variants) == 256
    assert variants[-1] == {"a": 99}
    matrix["include"] = [{"a": 99}, {"a": 98}]
    variants, problems = expand(matrix)
    assert variants == []
    assert problems == ["recipe.yaml:1:1: matrix: the matrix makes 257 variants after "
                        "`exclude` and `include`; at most 256 are allowed: split it into several "
                        "recipes"]


def test_a_large_product_that_exclude_brings_under_the_limit_is_expanded() -> None:
    # 2**16 combinations before exclude; excluding a=1 for eight of the sixteen keys leaves 256
    matrix: dict[str, Any] = {f"k{i:02}": [0, 1] for i in range(16)}
    matrix["exclude"] = [{f"k{i:02}": 1} for i in range(8)]
    variants, problems = expand(matrix)
    assert problems == []
    assert len(variants) == 256
    assert all(v[f"k{i:02}"] == 0 for v in variants for i in range(8))
    assert variants[1] == {**{f"k{i:02}": 0 for i in range(15)}, "k15": 1}


def test_exclude_agrees_with_filtering_the_product() -> None:
    rng = random.Random(11)
    for _ in range(200):
        axes = {f"k{i}": rng.sample([0, 1, 2, "x", True], rng.randint(1, 4))
                for i in range(rng.randint(1, 4))}
        excludes = [{k: rng.choice([*v, "y"]) for k, v in axes.items() if rng.random() < 0.5}
                    for _ in range(rng.randint(1, 4))]
        excludes = [e for e in excludes if e]
        if not excludes:
            continue
        product = [dict(zip(axes, c, strict=True)) for c in itertools.product(*axes.values())]
        expected = [c for c in product
                    if not any(all(format_value(c[k]) == format_value(v) for k, v in e.items())
                               for e in excludes)]
        variants, _ = expand({**axes, "exclude": excludes})
        assert variants == expected, (axes, excludes)


def test_the_lists_may_make_65536_combinations_before_exclude_and_no_more() -> None:
    matrix: dict[str, Any] = {"a": list(range(65536)),
                              "exclude": [{"a": i} for i in range(256, 65536)]}
    variants, problems = expand(matrix)
    assert problems == []
    assert [v["a"] for v in variants] == list(range(256))
    matrix["a"] = list(range(65537))
    variants, problems = expand(matrix)
    assert variants == []
    assert problems == ["recipe.yaml:1:1: matrix: the matrix's lists make 65537 combinations "
                        "before `exclude`; at most 65536 are allowed, and at most 256 variants "
                        "after it: split it into several recipes"]
