"""Variants from a ``matrix``, with GitHub Actions semantics.

The product of the lists comes first, then ``exclude`` removes the combinations that match an
entry, then each ``include`` entry is added to every remaining combination whose original values
it does not overwrite (it may overwrite values added by earlier includes); an entry that fits no
combination becomes a variant of its own.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kontext_pipeline.findings import Findings, did_you_mean

__all__ = ["DEFAULT_VARIANT", "MAX_VARIANTS", "Variant", "expand_matrix", "format_value"]

DEFAULT_VARIANT = "default"
"""The id of the single variant of a recipe without a matrix."""

MAX_VARIANTS = 256
"""The most variants a recipe may have (GitHub Actions' limit on a matrix, too): ten lists of
ten values would otherwise make ten billion."""

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Variant:
    """One combination of matrix values; ``id`` reads ``color=red,size=large``."""

    id: str
    values: Mapping[str, Scalar]

    @classmethod
    def of(cls, values: Mapping[str, Scalar]) -> Variant:
        if not values:
            return cls(DEFAULT_VARIANT, {})
        return cls(",".join(f"{k}={format_value(v)}" for k, v in values.items()), dict(values))


def format_value(value: Any) -> str:
    """A matrix value as written in variant ids: text as is, others as JSON (``true``, ``2``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _matches(entry: Mapping[str, Scalar], combination: Mapping[str, Scalar]) -> bool:
    return all(
        k in combination and format_value(combination[k]) == format_value(v)
        for k, v in entry.items()
    )


def expand_matrix(matrix: Mapping[str, Any] | None, findings: Findings) -> list[Variant]:
    """The variants of a schema-valid ``matrix`` (one default variant when there is none).

    Mistakes (an ``exclude`` naming an unknown key, no variant left, two identical variants)
    are added to ``findings``.
    """
    if not matrix:
        return [Variant.of({})]
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    count = math.prod(len(v) for v in axes.values())
    if count > MAX_VARIANTS:
        findings.add(("matrix",), _too_many(count))
        return []
    product = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]
    if not axes:
        product = []
    for index, entry in enumerate(matrix.get("exclude", [])):
        unknown = [k for k in entry if k not in axes]
        for key in unknown:
            findings.add(("matrix", "exclude", index, key),
                         f"'{key}' is not a matrix key{did_you_mean(key, axes)}", at="key")
        kept = [c for c in product if not _matches(entry, c)]
        if len(kept) == len(product) and not unknown:
            findings.warn(("matrix", "exclude", index), "excludes no combination")
        product = kept
    combinations = _include(product, matrix.get("include", []))
    if not combinations:
        findings.add(("matrix",), "the matrix leaves no variant: every combination is excluded")
    if len(combinations) > MAX_VARIANTS:
        findings.add(("matrix",), _too_many(len(combinations)))
        return []
    variants: list[Variant] = []
    seen: set[str] = set()
    for values in combinations:
        variant = Variant.of(values)
        if variant.id in seen:
            findings.add(("matrix",), f"the matrix produces variant '{variant.id}' twice")
            continue
        seen.add(variant.id)
        variants.append(variant)
    return variants


def _too_many(count: int) -> str:
    return (f"the matrix makes {count} combinations; at most {MAX_VARIANTS} are allowed: split "
            "it into several recipes")


def _include(
    product: list[dict[str, Scalar]], includes: list[dict[str, Scalar]]
) -> list[dict[str, Scalar]]:
    extended = [dict(c) for c in product]
    extra: list[dict[str, Scalar]] = []
    for entry in includes:
        fitted = False
        for original, combination in zip(product, extended, strict=True):
            if all(format_value(original[k]) == format_value(v)
                   for k, v in entry.items() if k in original):
                combination.update(entry)
                fitted = True
        if not fitted:
            extra.append(dict(entry))
    return extended + extra
