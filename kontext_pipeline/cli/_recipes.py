"""Commands about recipes themselves: ``validate``, ``plan`` and ``schema``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from kontext_pipeline.cli._base import (
    cache_dir_option,
    cli,
    load,
    open_cache,
    open_shared,
    peeking,
    provider_option,
    recipe_argument,
    shared_cache_options,
    var_option,
)
from kontext_pipeline.cli._output import echo, echo_json
from kontext_pipeline.cli._sharding import shard_option
from kontext_pipeline.errors import SpecError

if TYPE_CHECKING:
    from kontext_pipeline._support.diagnostics import Problem
    from kontext_pipeline.plan._shards import Shard

__all__ = ["plan", "schema", "validate"]


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(recipes: Sequence[str], strict: bool) -> None:
    """Check recipes: schema and semantic rules, every problem with FILE:LINE:COL."""
    import dataclasses  # noqa: PLC0415  (kept off --help's path)

    from kontext_pipeline.plan._memo import memoize  # noqa: PLC0415

    problems: list[Problem] = []
    for recipe in recipes:
        try:
            spec = load(recipe)
        except SpecError as error:
            problems.extend(error.problems)
            continue
        memoize(spec, os.environ)  # what the runs of the recipe to come start from
        if strict and spec.warnings:
            problems.extend(dataclasses.replace(w, severity="error") for w in spec.warnings)
            continue
        for warning in spec.warnings:
            echo(warning.format(), err=True)
        tasks = len(spec.variants) * len(spec.steps)
        echo(f"{recipe}: ok ({_count(len(spec.steps), 'step')}, "
             f"{_count(len(spec.variants), 'variant')}, {_count(tasks, 'task')})")
    if problems:
        raise SpecError(problems)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@cli.command()
@recipe_argument
@var_option
@provider_option
@cache_dir_option
@shared_cache_options
@shard_option
@click.option("--out", type=click.Path(file_okay=False, path_type=str),
              help="Where the last run of the recipe went (default: out/<recipe name>): steps "
                   "that will run say what changed since.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(*, recipe: str, variables: dict[str, str], provider: str, cache_dir: str | None,
         shared_cache: str | None, shared_readonly: bool, shard: Shard | None,
         out: str | None, as_json: bool) -> None:
    """Show variants, steps, rendered prompts, seeds, models, cache status and the cost, and
    why each step that will run does."""
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.outputs._manifest import last_run  # noqa: PLC0415
    from kontext_pipeline.outputs._plan_views import plan_json, plan_text  # noqa: PLC0415
    from kontext_pipeline.plan._explain import explain_misses  # noqa: PLC0415
    from kontext_pipeline.plan._locked import check_plan, read_plan_lock  # noqa: PLC0415
    from kontext_pipeline.plan._plan import build_plan  # noqa: PLC0415
    from kontext_pipeline.plan._resolution import lock_reasons, resolve  # noqa: PLC0415
    from kontext_pipeline.plan._shards import shard_plans  # noqa: PLC0415
    from kontext_pipeline.runner._locking import (  # noqa: PLC0415
        LOCKING_PROVIDER,
        refill_from_files,
    )
    from kontext_pipeline.store._lock import lock_path  # noqa: PLC0415

    spec = load(recipe)
    (result,) = shard_plans([build_plan(spec, overrides=variables, env=os.environ,
                                        provider=provider)], shard)
    lock = read_plan_lock(result) if provider == LOCKING_PROVIDER else None
    checked = check_plan(result, lock) if provider == LOCKING_PROVIDER else None
    cache = open_cache(cache_dir)
    shared = open_shared(shared_cache, readonly=shared_readonly,
                         going_on="the plan shows the local cache only")
    # the exported files judged as a run judges them, checked but not stored, and the shared
    # cache's entries read, not taken: plan writes nothing into the cache
    resolved = resolve(result, cache, lock, from_files=refill_from_files(
        cache, lock_path(spec.path).parent, store=False), shared=peeking(shared))
    reasons = explain_misses(resolved, last_run(Path(out) if out else Path("out") / spec.name))
    reasons.update(lock_reasons(resolved))
    if as_json:
        echo_json(plan_json(result, resolved, reasons, checked))
    else:
        echo(plan_text(result, resolved, reasons, checked))


@cli.command()
@click.option("--manifest", is_flag=True,
              help="Print the JSON Schema of manifest.json, what a run writes into --out.")
def schema(manifest: bool) -> None:
    """Print the recipe JSON Schema (draft 2020-12), or with --manifest the manifest's."""
    if manifest:
        from kontext_pipeline.outputs._manifest import manifest_schema_text  # noqa: PLC0415

        click.echo(manifest_schema_text(), nl=False)
        return
    from kontext_pipeline.recipe._schema import schema_text  # noqa: PLC0415

    click.echo(schema_text(), nl=False)
