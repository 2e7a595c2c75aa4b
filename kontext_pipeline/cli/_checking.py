"""``check``: the lock and the exported files match the recipe. No key, no cache, no network:
it reads the recipe, its input images, its lock and the files the lock lists, nothing else.
With ``--shared-cache`` (given on the command line: never from the environment, which a CI job
sets for every command) it also tells, when steps changed, how many of them the shared cache
holds: what a ``run`` would take without a request."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from kontext_pipeline.cli._base import (
    cli,
    load,
    open_shared,
    peeking,
    var_option,
)
from kontext_pipeline.cli._output import echo, echo_json
from kontext_pipeline.errors import KontextError, LockError, LockMismatchError, SpecError

if TYPE_CHECKING:
    from kontext_pipeline._support.diagnostics import Problem
    from kontext_pipeline.plan._plan import Plan
    from kontext_pipeline.store._lock import Lock
    from kontext_pipeline.store._shared import SharedCache

__all__ = ["check"]


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=str))
@var_option
@click.option("--shared-cache", "shared_cache", metavar="URL",
              help="Also say how many of the steps that changed this shared cache holds (read "
                   "only; check reaches the network only with this option, never from "
                   "KONTEXT_SHARED_CACHE).")
@click.option("--json", "as_json", is_flag=True,
              help="Print what was found as JSON on stdout (the differences, one by one).")
def check(recipes: Sequence[str], variables: dict[str, str], shared_cache: str | None,
          as_json: bool) -> None:
    """Check that each recipe's lock and the files it lists match the recipe: no key, no
    cache, no network. Exit 0, 2 (an invalid recipe or lock) or 3 (a difference)."""
    import json  # noqa: PLC0415  (kept off --help's path)

    from kontext_pipeline.plan._locked import (  # noqa: PLC0415
        CheckResult,
        check_plan,
        read_plan_lock,
    )
    from kontext_pipeline.plan._plan import build_plan  # noqa: PLC0415

    results: list[CheckResult] = []
    problems: list[Problem] = []
    unreadable: list[KontextError] = []
    shared = open_shared(shared_cache, readonly=True, going_on="check goes on without it")
    for recipe in recipes:
        try:
            spec = load(recipe)
            plan = build_plan(spec, overrides=variables, env=os.environ, provider="bfl")
            lock = read_plan_lock(plan)
            results.append(check_plan(plan, lock))
            if shared is not None and not results[-1].ok:
                _tell_shared(recipe, plan, lock, shared)
        except SpecError as error:
            problems.extend(error.problems)
        except LockError as error:
            unreadable.append(error)
    documents: list[dict[str, Any]] = [r.as_dict() for r in results]
    # the shape follows the command line, not what could be read: one recipe, one object (none
    # if it could not be checked); several, a list of those that could
    if as_json and (len(recipes) > 1 or documents):
        shown = documents[0] if len(recipes) == 1 else documents
        echo_json(json.dumps(shown, indent=2, ensure_ascii=False))
    elif not as_json:
        for result in results:
            if result.ok:
                echo(result.summary())
    _finish(results, problems, unreadable)


def _tell_shared(recipe: str, plan: Plan, lock: Lock | None, shared: SharedCache) -> None:
    """How many of the steps that changed since the lock the shared cache holds (looked up
    behind an empty cache: check reads no local cache)."""
    import tempfile  # noqa: PLC0415

    from kontext_pipeline.plan._resolution import resolve  # noqa: PLC0415
    from kontext_pipeline.store._cache import Cache  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="kontext-check-") as empty:
        resolved = resolve(plan, Cache(empty), lock, shared=peeking(shared))
    changed = [r for r in resolved if r.locked is None]
    held = sum(1 for r in changed if r.source == "shared")
    if changed and shared.on:
        echo(f"{recipe}: the shared cache holds {held} of the {len(changed)} steps that "
             "changed; `kontext-pipeline run` takes those without a request", err=True)


def _finish(results: Sequence[Any], problems: Sequence[Problem],
            unreadable: Sequence[KontextError]) -> None:
    """Every finding reported, then the worst exit code: a recipe or lock that cannot be read
    (2: nothing could be checked for it) before a difference (3)."""
    lines = [f"{result.recipe}: {difference}" for result in results
             for difference in result.differences]
    errors: list[KontextError] = [*unreadable]
    if lines:
        errors.insert(0, LockMismatchError(lines))
    if problems:
        errors.append(SpecError(problems))
    for error in errors[:-1]:
        echo(f"kontext-pipeline: {error}", err=True)
    if errors:
        raise errors[-1]
