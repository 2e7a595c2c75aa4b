"""``--shard I/N``: the I-th of N disjoint, stable shares of a run's variants. Each (recipe,
variant) pair is placed by the sha256 of ``<recipe>\\0<variant id>`` and the pairs are dealt
round-robin; the shares are disjoint, cover every variant, differ in size by one at most, and
depend on nothing but the pairs. A shard's manifest records its ``shard``."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections import Counter

import click
import pytest
from click.testing import CliRunner

from kontext_pipeline import build_plan, load_recipe
from kontext_pipeline.cli import cli
from kontext_pipeline.cli._sharding import shard_option
from kontext_pipeline.errors import UsageError
from kontext_pipeline.outputs._manifest import Manifest, parse_manifest
from kontext_pipeline.plan._plan import Plan
from kontext_pipeline.plan._shards import Shard, parse_shard, shard_plans
from tests.conftest import WriteRecipe

GRID = """
    version: 1
    name: grid
    seed: 7
    matrix:
      tone: [dusk, dawn, noon]
      size: [10, 9, 100, 8]
    inputs:
      photo: photo.png
    steps:
      - {id: tint, image: photo, prompt: "Tint it for {{ tone }} at size {{ size }}"}
      - {id: frame, image: tint, prompt: "Frame it {{ size }} wide at {{ tone }}"}
    outputs:
      card: frame
    """
"""Twelve variants (3 × 4) of two steps."""

SMALL = """
    version: 1
    name: small
    matrix:
      ink: [red, blue, green, black, white]
    steps:
      - {id: draw, prompt: "Draw it in {{ ink }}"}
    """
"""Five variants of one step."""


def plan_of(write_recipe: WriteRecipe, text: str, name: str) -> Plan:
    return build_plan(load_recipe(write_recipe(text, name)), provider="preview")


@pytest.fixture
def grid(write_recipe: WriteRecipe) -> Plan:
    return plan_of(write_recipe, GRID, "grid.yaml")


def pairs(plans: list[Plan]) -> list[tuple[str, str]]:
    return [(plan.spec.name, variant.id) for plan in plans for variant in plan.variants]


# --- parse_shard -------------------------------------------------------------------------

FORM = "write --shard I/N, e.g. --shard 2/4 for the second of 4 shards"


@pytest.mark.parametrize(("text", "message"), [
    ("0/3", f"--shard 0/3: I must be 1 to 3 (shards count from 1); {FORM}"),
    ("4/3", f"--shard 4/3: I must be 1 to 3 (shards count from 1); {FORM}"),
    ("1/0", f"--shard 1/0: N is 0, and there is at least one shard; {FORM}"),
    ("0/0", f"--shard 0/0: N is 0, and there is at least one shard; {FORM}"),
    ("x", f"--shard x: not I/N; {FORM}"),
    ("", f"--shard (empty): not I/N; {FORM}"),
    ("  ", f"--shard (empty): not I/N; {FORM}"),
    ("2", f"--shard 2: not I/N; {FORM}"),
    ("-1/3", f"--shard -1/3: not I/N; {FORM}"),
    ("1/3/4", f"--shard 1/3/4: not I/N; {FORM}"),
    ("1 / 3", f"--shard 1 / 3: not I/N; {FORM}"),
    ("\uff11/3", f"--shard \uff11/3: not I/N; {FORM}"),  # a full-width digit one
    ("1/1000000", f"--shard 1/1000000: at most 999999 shards; {FORM}"),
    ("1/" + "9" * 5000, f"--shard 1/{'9' * 5000}: at most 999999 shards; {FORM}"),
])
def test_a_wrong_shard_says_what_is_wrong_and_shows_the_form(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_shard(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(("text", "shard"), [
    ("2/3", Shard(2, 3)), ("1/1", Shard(1, 1)), (" 3/3 ", Shard(3, 3)),
    ("02/04", Shard(2, 4)), ("999999/999999", Shard(999999, 999999)),
])
def test_a_shard_is_read_and_written_as_i_of_n(text: str, shard: Shard) -> None:
    assert parse_shard(text) == shard
    assert str(parse_shard(text)) == f"{shard.index}/{shard.count}"


def test_a_shard_out_of_range_cannot_be_made() -> None:
    with pytest.raises(ValueError, match=r"^shard 4/3: expected 1 <= index <= count$"):
        Shard(4, 3)


def test_the_option_refuses_a_wrong_shard_with_exit_code_2() -> None:
    group = click.group(cls=type(cli))(lambda: None)

    @group.command()
    @shard_option
    def job(shard: Shard | None) -> None:
        click.echo(f"shard {shard}")

    runner = CliRunner()
    result = runner.invoke(group, ["job", "--shard", "4/3"], catch_exceptions=False)
    assert (result.exit_code, result.stderr) == (
        2, f"kontext-pipeline: --shard 4/3: I must be 1 to 3 (shards count from 1); {FORM}\n")
    result = runner.invoke(group, ["job", "--shard", "2/3"], catch_exceptions=False)
    assert (result.exit_code, result.stdout) == (0, "shard 2/3\n")
    result = runner.invoke(group, ["job"], catch_exceptions=False)
    assert (result.exit_code, result.stdout) == (0, "shard None\n")


# --- shard_plans -------------------------------------------------------------------------


def test_no_shard_leaves_the_plans_as_they_are(grid: Plan) -> None:
    assert shard_plans([grid], None) == [grid]


@pytest.mark.parametrize("count", [3, 5])
def test_the_shares_are_disjoint_cover_every_variant_and_are_balanced(grid: Plan,
                                                                      count: int) -> None:
    shares = [shard_plans([grid], Shard(index, count)) for index in range(1, count + 1)]
    dealt = [pairs(share) for share in shares]
    every = Counter(pair for share in dealt for pair in share)
    assert sorted(every) == sorted(pairs([grid]))  # covering
    assert len(every) == 12
    assert set(every.values()) == {1}  # disjoint
    sizes = [len(share) for share in dealt]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 12
    assert sorted(sizes, reverse=True) == [12 // count + (i < 12 % count) for i in range(count)]


@pytest.mark.parametrize("count", [3, 5])
def test_a_share_is_the_documented_deal(grid: Plan, count: int) -> None:
    """Pairs in the order of sha256(recipe \\0 variant), shard I takes places I-1, I-1+N, …"""
    ranked = sorted(pairs([grid]), key=lambda pair: hashlib.sha256(
        f"{pair[0]}\0{pair[1]}".encode()).hexdigest())
    for index in range(1, count + 1):
        (share,) = shard_plans([grid], Shard(index, count))
        assert sorted(pairs([share])) == sorted(ranked[index - 1::count])


def test_the_shares_are_stable(write_recipe: WriteRecipe, grid: Plan) -> None:
    """The same on every machine and every time: the deal of this recipe is pinned."""
    again = plan_of(write_recipe, GRID, "copy.yaml")
    shares = {index: [v.id for v in shard_plans([grid], Shard(index, 3))[0].variants]
              for index in (1, 2, 3)}
    assert shares == {
        1: ["tone=dusk,size=9", "tone=dawn,size=10", "tone=dawn,size=8", "tone=noon,size=100"],
        2: ["tone=dusk,size=10", "tone=dusk,size=100", "tone=dawn,size=9",
            "tone=dawn,size=100"],
        3: ["tone=dusk,size=8", "tone=noon,size=10", "tone=noon,size=9", "tone=noon,size=8"],
    }
    for index in (1, 2, 3):
        assert [v.id for v in shard_plans([again], Shard(index, 3))[0].variants] == shares[index]


def test_a_share_keeps_the_plans_order_of_variants_and_tasks(grid: Plan) -> None:
    for index in range(1, 6):
        (share,) = shard_plans([grid], Shard(index, 5))
        chosen = {v.id for v in share.variants}
        assert share.variants == tuple(v for v in grid.variants if v.id in chosen)
        assert share.tasks == tuple(t for t in grid.tasks if t.variant in chosen)
        assert (share.spec, share.provider, share.variables) == (grid.spec, grid.provider,
                                                                 grid.variables)
        assert len(share.tasks) == 2 * len(share.variants)


def test_a_run_of_two_recipes_is_dealt_jointly_whatever_their_order(
        write_recipe: WriteRecipe, grid: Plan) -> None:
    small = plan_of(write_recipe, SMALL, "small.yaml")
    for count in (2, 4, 17):
        forward = [shard_plans([grid, small], Shard(i, count)) for i in range(1, count + 1)]
        backward = [shard_plans([small, grid], Shard(i, count)) for i in range(1, count + 1)]
        for ahead, behind in zip(forward, backward, strict=True):
            assert [p.spec.name for p in ahead] == ["grid", "small"]
            assert ahead == behind[::-1]  # the same shares, in the order the plans were given
        sizes = [len(pairs(share)) for share in forward]
        assert max(sizes) - min(sizes) <= 1  # balanced over both recipes
        assert sum(sizes) == 17
        every = Counter(pair for share in forward for pair in pairs(share))
        assert set(every.values()) == {1}
        assert len(every) == 17
    # more shards than variants: some shards have no variant of a recipe, or none at all
    (grid_share, small_share) = shard_plans([grid, small], Shard(17, 17))
    assert len(grid_share.variants) + len(small_share.variants) == 1
    nothing = shard_plans([small], Shard(6, 6))[0]
    assert (nothing.variants, nothing.tasks) == ((), ())


# --- the manifest records the shard ------------------------------------------------------

WRITTEN = {
    "pipeline": "grid", "spec_sha256": "a" * 64, "provider": "preview",
    "totals": {"steps": 0, "cache_hits": 0, "calls": 0, "credits": 0, "failed": 0},
    "steps": [],
}


def test_a_shards_manifest_records_it_after_the_provider() -> None:
    document = {**WRITTEN, "shard": "2/3"}
    manifest = parse_manifest(document)
    assert manifest.shard == Shard(2, 3)
    written = json.loads(manifest.to_json())
    assert written == document
    assert list(written) == ["pipeline", "spec_sha256", "provider", "shard", "totals", "steps"]
    whole = parse_manifest(copy.deepcopy(WRITTEN))
    assert whole.shard is None
    assert "shard" not in json.loads(whole.to_json())
    assert isinstance(whole, Manifest)


@pytest.mark.parametrize(("value", "message"), [
    ("0/3", 'shard: expected I/N (1 <= I <= N), got "0/3"'),
    ("4/3", 'shard: expected I/N (1 <= I <= N), got "4/3"'),
    ("02/3", 'shard: expected I/N (1 <= I <= N), got "02/3"'),
    (" 2/3", 'shard: expected I/N (1 <= I <= N), got " 2/3"'),
    (2, "shard: expected a string, got an integer"),
    (None, "shard: expected a string, got null"),
])
def test_a_wrong_shard_in_a_manifest_is_named(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_manifest({**WRITTEN, "shard": value})
