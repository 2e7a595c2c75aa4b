"""``check``: the lock and the exported files match the recipe. No key, no cache, no network:
it reads the recipe, its input images, its lock and the files the lock lists, nothing else."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from kontext_pipeline.cli._base import cli, load, var_option
from kontext_pipeline.cli._output import echo, echo_json
from kontext_pipeline.errors import KontextError, LockError, LockMismatchError, SpecError

if TYPE_CHECKING:
    from kontext_pipeline._support.diagnostics import Problem

__all__ = ["check"]


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=str))
@var_option
@click.option("--json", "as_json", is_flag=True,
              help="Print what was found as JSON on stdout (the differences, one by one).")
def check(recipes: Sequence[str], variables: dict[str, str], as_json: bool) -> None:
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
    for recipe in recipes:
        try:
            spec = load(recipe)
            plan = build_plan(spec, overrides=variables, env=os.environ, provider="bfl")
            results.append(check_plan(plan, read_plan_lock(plan)))
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
