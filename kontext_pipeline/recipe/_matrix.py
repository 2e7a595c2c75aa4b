"""Variants from a ``matrix``, with GitHub Actions semantics.

The product of the lists comes first, then ``exclude`` removes the combinations that match an
entry, then each ``include`` entry is added to every remaining combination whose original values
it does not overwrite (it may overwrite values added by earlier includes); an entry that fits no
combination becomes a variant of its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kontext_pipeline.recipe._findings import Findings, did_you_mean

__all__ = ["DEFAULT_VARIANT", "MAX_COMBINATIONS", "MAX_VARIANTS", "Variant", "expand_matrix",
           "format_value"]

DEFAULT_VARIANT = "default"
"""The id of the single variant of a recipe without a matrix."""

MAX_VARIANTS = 256
"""The most variants a recipe may have, counted after ``exclude`` and ``include`` (GitHub
Actions' limit on a matrix, too)."""

MAX_COMBINATIONS = 65_536
"""The most combinations the lists may make before ``exclude`` removes some: ten lists of ten
values would otherwise make ten billion."""

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


def expand_matrix(matrix: Mapping[str, Any] | None, findings: Findings) -> list[Variant]:
    """The variants of a schema-valid ``matrix`` (one default variant when there is none).

    Mistakes (an ``exclude`` naming an unknown key, no variant left, two identical variants,
    more than :data:`MAX_VARIANTS` variants after ``exclude`` and ``include``) are added to
    ``findings``. The product of the lists is never built: ``exclude`` works on a bit set of
    at most :data:`MAX_COMBINATIONS` bits, and only the combinations it keeps are made.
    """
    if not matrix:
        return [Variant.of({})]
    axes = {k: v for k, v in matrix.items() if k not in ("include", "exclude")}
    count = math.prod(len(v) for v in axes.values())
    if count > MAX_COMBINATIONS:
        findings.add(("matrix",), f"the matrix's lists make {count} combinations before "
                     f"`exclude`; at most {MAX_COMBINATIONS} are allowed, and at most "
                     f"{MAX_VARIANTS} variants after it: split it into several recipes")
        return []
    product = _Product(axes)
    kept = product.all if axes else 0
    for index, entry in enumerate(matrix.get("exclude", [])):
        unknown = [k for k in entry if k not in axes]
        for key in unknown:
            findings.add(("matrix", "exclude", index, key),
                         f"'{key}' is not a matrix key{did_you_mean(key, axes)}", at="key")
        matched = 0 if unknown else product.matching(entry) & kept
        if not matched and not unknown:
            findings.warn(("matrix", "exclude", index), "excludes no combination")
        kept &= ~matched
    remaining = kept.bit_count()
    if remaining > MAX_VARIANTS:
        findings.add(("matrix",), _too_many(remaining, "`exclude`"))
        return []
    combinations = _include(product.combinations(kept), matrix.get("include", []))
    if not combinations:
        findings.add(("matrix",), "the matrix leaves no variant: every combination is excluded")
    if len(combinations) > MAX_VARIANTS:
        findings.add(("matrix",), _too_many(len(combinations), "`exclude` and `include`"))
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


def _too_many(count: int, after: str) -> str:
    return (f"the matrix makes {count} variants after {after}; at most {MAX_VARIANTS} are "
            "allowed: split it into several recipes")


_MASKS_KEPT = 1024
"""How many masks of one value a :class:`_Product` keeps (8 MiB at most)."""


class _Product:
    """The product of a matrix's lists as a bit set: combination ``i`` (in
    ``itertools.product`` order, the last list varying fastest) is bit ``i``."""

    def __init__(self, axes: Mapping[str, Sequence[Scalar]]) -> None:
        self.axes = dict(axes)
        self.size = math.prod(len(v) for v in axes.values())
        self.all = (1 << self.size) - 1
        self.strides: dict[str, int] = {}
        self.positions: dict[str, dict[str, list[int]]] = {}
        stride = 1
        for key in reversed(list(axes)):
            self.strides[key] = stride
            stride *= len(axes[key])
            for position, value in enumerate(axes[key]):
                self.positions.setdefault(key, {}).setdefault(format_value(value), []).append(
                    position)
        self._masks: dict[tuple[str, str], int] = {}

    def matching(self, entry: Mapping[str, Scalar]) -> int:
        """The combinations whose values include every value of ``entry``."""
        found = self.all
        for key, value in entry.items():
            found &= self._having(key, format_value(value))
            if not found:
                break
        return found

    def _having(self, key: str, value: str) -> int:
        """The combinations whose ``key`` is ``value``: a block of ``stride`` bits per
        position of the value in the list, repeated every ``period`` bits."""
        mask = self._masks.get((key, value))
        if mask is not None:
            return mask
        stride = self.strides[key]
        block = (1 << stride) - 1
        mask = 0
        for position in self.positions[key].get(value, ()):
            mask |= block << (position * stride)
        width = stride * len(self.axes[key])
        while mask and width < self.size:  # doubling: log2(size / period) shifts
            mask |= mask << width
            width *= 2
        mask &= self.all
        if len(self._masks) < _MASKS_KEPT:
            self._masks[(key, value)] = mask
        return mask

    def combinations(self, bits: int) -> list[dict[str, Scalar]]:
        """The combinations of the set ``bits``, in product order."""
        found: list[dict[str, Scalar]] = []
        while bits:
            lowest = bits & -bits
            index = lowest.bit_length() - 1
            bits ^= lowest
            found.append({key: values[(index // self.strides[key]) % len(values)]
                          for key, values in self.axes.items()})
        return found


def _include(
    product: list[dict[str, Scalar]], includes: list[dict[str, Scalar]]
) -> list[dict[str, Scalar]]:
    originals = [{k: format_value(v) for k, v in c.items()} for c in product]
    extended = [dict(c) for c in product]
    extra: list[dict[str, Scalar]] = []
    for entry in includes:
        fitted = False
        wanted = [(k, format_value(v)) for k, v in entry.items()]
        for original, combination in zip(originals, extended, strict=True):
            if all(original[k] == v for k, v in wanted if k in original):
                combination.update(entry)
                fitted = True
        if not fitted:
            extra.append(dict(entry))
    return extended + extra
