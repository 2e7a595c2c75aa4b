"""Shards: ``--shard I/N`` runs the I-th of N disjoint, stable shares of a run's variants, so that
N jobs (a CI matrix) together run every variant once.

Every (recipe name, variant id) pair of the run is placed by the sha256 of
``<recipe name>\\0<variant id>`` and the pairs are dealt round-robin in that order: shard I gets
the pairs at places I-1, I-1+N, I-1+2N, … A shard's share depends only on the set of pairs (not
on the order of the recipes, nor on the machine), the N shares are disjoint and cover every
pair, and their sizes differ by one at most. A job with several recipes deals them jointly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kontext_pipeline.errors import UsageError

if TYPE_CHECKING:
    from kontext_pipeline.plan._plan import Plan

__all__ = ["Shard", "parse_shard", "shard_plans"]

_FORM = "write --shard I/N, e.g. --shard 2/4 for the second of 4 shards"
_SHARD = re.compile(r"([0-9]+)/([0-9]+)", re.ASCII)
_MAX_DIGITS = 6  # a million shards is more than any fleet runs


@dataclass(frozen=True)
class Shard:
    """The ``index``-th of ``count`` shares of a run's variants (1 <= index <= count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: expected 1 <= index <= count")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """The shard ``I/N`` names; :class:`UsageError` says what is wrong and shows the form."""
    match = _SHARD.fullmatch(text.strip())
    if match is None:
        shown = text if text.strip() else "(empty)"
        raise UsageError(f"--shard {shown}: not I/N; {_FORM}")
    digits_i, digits_n = match.groups()
    if max(len(digits_i.lstrip("0")), len(digits_n.lstrip("0"))) > _MAX_DIGITS:
        raise UsageError(f"--shard {text.strip()}: at most 999999 shards; {_FORM}")
    index, count = int(digits_i), int(digits_n)
    if count == 0:
        raise UsageError(f"--shard {text.strip()}: N is 0, and there is at least one shard; "
                         f"{_FORM}")
    if not 1 <= index <= count:
        raise UsageError(f"--shard {text.strip()}: I must be 1 to {count} (shards count from "
                         f"1); {_FORM}")
    return Shard(index, count)


def shard_plans(plans: Sequence[Plan], shard: Shard | None) -> list[Plan]:
    """Each plan narrowed to the variants ``shard`` gets (see the module), its variants and
    tasks kept in plan order; a plan may be left with no variant. ``None``: the plans as they
    are."""
    if shard is None:
        return list(plans)
    pairs = sorted({(plan.spec.name, variant.id) for plan in plans for variant in plan.variants},
                   key=lambda pair: (_place(*pair), pair))
    mine = set(pairs[shard.index - 1::shard.count])
    narrowed = []
    for plan in plans:
        name = plan.spec.name
        variants = tuple(v for v in plan.variants if (name, v.id) in mine)
        kept = {v.id for v in variants}
        narrowed.append(dataclasses.replace(
            plan, variants=variants, tasks=tuple(t for t in plan.tasks if t.variant in kept)))
    return narrowed


def _place(pipeline: str, variant: str) -> str:
    """Where a pair stands in the deal: a hash, so that shares do not follow the matrix's
    order (a slow value of one key spreads over every shard)."""
    return hashlib.sha256(f"{pipeline}\0{variant}".encode()).hexdigest()
