"""The ``kontext-pipeline`` command: parse options, call the library, render, map errors to exit
codes. No logic lives here, and heavy modules are imported only by the commands that need them,
so ``--help`` starts fast."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from kontext_pipeline.errors import (
    CacheError,
    KontextError,
    OutputError,
    ProviderError,
    RefusedToSpendError,
    SpecError,
    StepsFailedError,
    UsageError,
)

if TYPE_CHECKING:
    from pathlib import Path

    from kontext_pipeline.cache import Cache
    from kontext_pipeline.diagnostics import Problem
    from kontext_pipeline.progress import Progress
    from kontext_pipeline.spec import Spec

__all__ = ["EXIT_CODES", "cli", "exit_code", "main"]

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130

EXIT_CODES: tuple[tuple[type[KontextError], int], ...] = (
    (SpecError, EXIT_INVALID),
    (UsageError, EXIT_INVALID),
    (RefusedToSpendError, EXIT_REFUSED),
    (ProviderError, EXIT_FAILED),
    (StepsFailedError, EXIT_FAILED),
    (CacheError, EXIT_FAILED),
    (OutputError, EXIT_FAILED),
)
"""Each error class and its documented exit code; the first matching class wins."""

_PROVIDERS = ("bfl", "preview")


def exit_code(error: KontextError) -> int:
    """The documented exit code of ``error``."""
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_FAILED


def _report(error: KontextError) -> None:
    if isinstance(error, SpecError):
        for problem in error.problems:
            click.echo(problem.format(), err=True)
        errors = sum(1 for p in error.problems if p.is_error)
        files = sorted({p.file for p in error.problems})
        noun = "problem" if errors == 1 else "problems"
        click.echo(f"kontext-pipeline: {errors} {noun} in {', '.join(files)}", err=True)
    else:
        click.echo(f"kontext-pipeline: {error}", err=True)


class _Group(click.Group):
    """Maps every library error to its exit code, with one message and no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KontextError as error:
            _report(error)
            ctx.exit(exit_code(error))
        except KeyboardInterrupt:
            click.echo("kontext-pipeline: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _parse_vars(_ctx: click.Context, _param: click.Parameter,
                values: Sequence[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--var")
        parsed[name.strip()] = value
    return parsed


_var_option = click.option(
    "--var", "variables", multiple=True, metavar="NAME=VALUE", callback=_parse_vars,
    help="Override a recipe variable, or select the variants with this matrix value. Repeatable.")
_provider_option = click.option(
    "--provider", type=click.Choice(_PROVIDERS), default="bfl", show_default=True,
    help="Who makes the images: the BFL API, or the offline preview stand-in.")
_recipe_argument = click.argument(
    "recipe", type=click.Path(dir_okay=True, path_type=str))


_cache_dir_option = click.option(
    "--cache-dir", envvar="KONTEXT_CACHE_DIR", type=click.Path(path_type=str),
    help="Cache directory (or KONTEXT_CACHE_DIR; default: the user cache directory).")


def _open_cache(cache_dir: str | None) -> Cache:
    from pathlib import Path  # noqa: PLC0415

    from kontext_pipeline.cache import Cache, default_cache_dir  # noqa: PLC0415

    return Cache(Path(cache_dir) if cache_dir else default_cache_dir(os.environ))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "max_content_width": 100})
@click.version_option(package_name="kontext-pipeline", prog_name="kontext-pipeline")
def cli() -> None:
    """Declarative, cached, reproducible FLUX.1 Kontext edit recipes.

    \b
    Start with:  kontext-pipeline validate pipelines/*.yaml
    Then:        kontext-pipeline plan pipelines/poster-chain.yaml
    """


def _load(recipe: str) -> Spec:
    from kontext_pipeline.spec import load_spec  # noqa: PLC0415  (keeps --help fast)

    return load_spec(recipe, env=os.environ)


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def validate(recipes: Sequence[str], strict: bool) -> None:
    """Check recipes: schema and semantic rules, every problem with FILE:LINE:COL."""
    import dataclasses  # noqa: PLC0415  (kept off --help's path)

    problems: list[Problem] = []
    for recipe in recipes:
        try:
            spec = _load(recipe)
        except SpecError as error:
            problems.extend(error.problems)
            continue
        if strict and spec.warnings:
            problems.extend(dataclasses.replace(w, severity="error") for w in spec.warnings)
            continue
        for warning in spec.warnings:
            click.echo(warning.format(), err=True)
        tasks = len(spec.variants) * len(spec.steps)
        click.echo(f"{recipe}: ok ({_count(len(spec.steps), 'step')}, "
                   f"{_count(len(spec.variants), 'variant')}, {_count(tasks, 'task')})")
    if problems:
        raise SpecError(problems)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@cli.command()
@_recipe_argument
@_var_option
@_provider_option
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(*, recipe: str, variables: dict[str, str], provider: str, cache_dir: str | None,
         as_json: bool) -> None:
    """Show variants, steps, rendered prompts, seeds, models, cache status and the cost."""
    from kontext_pipeline.plan import build_plan  # noqa: PLC0415
    from kontext_pipeline.report import plan_json, plan_text  # noqa: PLC0415
    from kontext_pipeline.resolution import resolve  # noqa: PLC0415

    spec = _load(recipe)
    result = build_plan(spec, overrides=variables, env=os.environ, provider=provider)
    resolved = resolve(result, _open_cache(cache_dir))
    click.echo(plan_json(result, resolved) if as_json else plan_text(result, resolved))


@cli.command()
def schema() -> None:
    """Print the recipe JSON Schema (draft 2020-12)."""
    from kontext_pipeline.schema import schema_text  # noqa: PLC0415

    click.echo(schema_text(), nl=False)


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", type=click.Path(file_okay=False, path_type=str),
              help="Output directory (default: out/<recipe name>; with several recipes, "
                   "DIR/<recipe name>).")
@_var_option
@_provider_option
@click.option("--api-base", envvar="BFL_API_BASE", default=None,
              help="BFL API base URL (or BFL_API_BASE; default https://api.bfl.ai).")
@_cache_dir_option
@click.option("--concurrency", type=click.IntRange(1, 24), default=24, show_default=True,
              help="Most tasks active at once (flux-kontext-max: at most 6).")
@click.option("--frozen", is_flag=True,
              help="Call no provider: every step must be cached, else exit 3.")
@click.option("--max-credits", type=click.IntRange(0), default=None,
              help="Refuse (exit 3) if the steps that are not cached would cost more.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the manifest as JSON on stdout, and nothing else.")
def run(*, recipes: Sequence[str], out: str | None, variables: dict[str, str], provider: str,
        api_base: str | None, cache_dir: str | None, concurrency: int, frozen: bool,
        max_credits: int | None, as_json: bool) -> None:
    """Run recipes: every step cached by its inputs, outputs and manifest.json in --out."""
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from kontext_pipeline.plan import build_plan  # noqa: PLC0415
    from kontext_pipeline.providers import open_provider  # noqa: PLC0415
    from kontext_pipeline.runner import run_plans  # noqa: PLC0415

    specs = _load_all(recipes)
    plans = [build_plan(spec, overrides=variables, env=os.environ, provider=provider)
             for spec in specs]
    out_dirs = _out_dirs([s.name for s in specs], out)
    store = _open_cache(cache_dir)
    display = _progress(as_json)
    try:
        reports = asyncio.run(run_plans(
            plans, cache=store, out_dirs=out_dirs, frozen=frozen, max_credits=max_credits,
            open_provider=lambda: open_provider(provider, environ=os.environ,
                                                api_base=api_base, concurrency=concurrency),
            on_start=display.start, on_event=display.event))
    finally:
        display.close()
    if as_json:
        documents = [r.manifest for r in reports]
        click.echo(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2,
                              ensure_ascii=False))
    else:
        for report in reports:
            totals = report.manifest["totals"]
            click.echo(f"{report.plan.spec.name}: {totals['steps']} steps, "
                       f"{totals['cache_hits']} cached, {totals['calls']} made, "
                       f"{totals['credits']} credits -> {report.out_dir / 'manifest.json'}")
    failures = [line for report in reports for line in report.failures]
    if failures:
        raise StepsFailedError(failures)


def _load_all(recipes: Sequence[str]) -> list[Spec]:
    """Load every recipe, reporting the problems of all of them at once."""
    specs: list[Spec] = []
    problems: list[Problem] = []
    for recipe in recipes:
        try:
            specs.append(_load(recipe))
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    return specs


def _out_dirs(names: Sequence[str], out: str | None) -> list[Path]:
    from pathlib import Path  # noqa: PLC0415

    if len(set(names)) != len(names):
        raise UsageError("two recipes have the same name; run them separately or rename one")
    if len(names) == 1:
        return [Path(out) if out else Path("out") / names[0]]
    return [Path(out or "out") / name for name in names]


def _progress(as_json: bool) -> Progress:
    from kontext_pipeline.progress import (  # noqa: PLC0415
        LiveProgress,
        PlainProgress,
        SilentProgress,
    )

    if as_json:
        return SilentProgress()
    if sys.stderr.isatty():
        from rich.console import Console  # noqa: PLC0415

        return LiveProgress(Console(stderr=True))
    return PlainProgress(lambda line: click.echo(line, err=True))


@cli.group()
def cache() -> None:
    """Inspect and maintain the result cache."""


@cache.command("info")
@_cache_dir_option
def cache_info(cache_dir: str | None) -> None:
    """Where the cache is, how many entries and objects, how many bytes."""
    store = _open_cache(cache_dir)
    stats = store.stats()
    click.echo(f"directory: {store.directory}")
    click.echo(f"entries:   {stats.entries}")
    click.echo(f"objects:   {stats.objects} ({stats.bytes / 1e6:.1f} MB)")


@cache.command("ls")
@_cache_dir_option
def cache_ls(cache_dir: str | None) -> None:
    """List entries: key, provider, model, size, age and prompt."""
    import time  # noqa: PLC0415

    now = time.time()
    for path, entry in _open_cache(cache_dir).entries():
        if entry is None:
            click.echo(f"{path.stem[:12]}  (damaged entry)")
            continue
        age_h = (now - entry.created_at) / 3600
        prompt = str(entry.request.get("prompt", ""))
        prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
        click.echo(f"{entry.key[:12]}  {entry.provider:<7}  {entry.model:<16}  "
                   f"{entry.width}x{entry.height} {entry.format:<4}  {entry.size / 1e3:8.1f} kB  "
                   f"{age_h:6.1f} h  {prompt}")


@cache.command("verify")
@_cache_dir_option
@click.option("--fix", is_flag=True, help="Remove what is damaged (it is made again when "
                                          "needed).")
def cache_verify(cache_dir: str | None, fix: bool) -> None:
    """Re-hash every object and check every entry; exit 1 if anything is damaged."""
    problems = _open_cache(cache_dir).verify(fix=fix)
    for problem in problems:
        click.echo(f"{problem}{' (removed)' if fix else ''}")
    if problems and not fix:
        raise CacheError(f"{len(problems)} damaged item{'' if len(problems) == 1 else 's'} "
                         "in the cache; `kontext-pipeline cache verify --fix` removes them")
    click.echo(f"cache ok{' after removing ' + str(len(problems)) if problems else ''}")


@cache.command("gc")
@click.argument("recipes", nargs=-1, type=click.Path(path_type=str))
@_cache_dir_option
@_var_option
@_provider_option
@click.option("--older-than", type=click.FloatRange(0), metavar="DAYS",
              help="Remove entries created more than DAYS ago.")
def cache_gc(*, recipes: Sequence[str], cache_dir: str | None, variables: dict[str, str],
             provider: str, older_than: float | None) -> None:
    """Remove entries the RECIPES no longer reach (and/or older than --older-than)."""
    from kontext_pipeline.plan import build_plan  # noqa: PLC0415
    from kontext_pipeline.resolution import resolve  # noqa: PLC0415

    if not recipes and older_than is None:
        raise UsageError("cache gc needs RECIPES to keep, --older-than DAYS, or both")
    store = _open_cache(cache_dir)
    keep: set[str] | None = None
    if recipes:
        plans = [build_plan(spec, overrides=variables, env=os.environ, provider=provider)
                 for spec in _load_all(recipes)]
        keep = {r.key for plan in plans for r in resolve(plan, store) if r.hit and r.key}
    removed = store.remove_entries(keep, None if older_than is None else older_than * 86400)
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")


@cache.command("clear")
@_cache_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir: str | None, yes: bool) -> None:
    """Remove every entry and object."""
    store = _open_cache(cache_dir)
    if not yes:
        click.confirm(f"Remove everything in {store.directory}?", abort=True)
    store.clear()
    click.echo(f"cleared {store.directory}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--latency", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds from submit to a terminal status.")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              help="Accept only these keys (repeatable; default: any non-empty key).")
@click.option("--active-limit", type=click.IntRange(1), default=24, show_default=True,
              help="Active tasks allowed per account (flux-kontext-max: 6) before 429.")
@click.option("--url-ttl", type=float, default=600.0, show_default=True,
              help="Seconds a signed result URL stays valid.")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a 5xx answer.")
@click.option("--throttle-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a spurious 429.")
@click.option("--drop-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a dropped connection.")
@click.option("--truncate-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a truncated result download.")
@click.option("--jitter", type=click.FloatRange(0), default=0.0,
              help="Fault injection: ± seconds of random latency per task.")
@click.option("--fault-seed", type=int, default=0, show_default=True,
              help="Seed of the fault injection's random generator.")
def serve(*, host: str, port: int, latency: float, api_keys: Sequence[str], active_limit: int,
          url_ttl: float, error_rate: float, throttle_rate: float, drop_rate: float,
          truncate_rate: float, jitter: float, fault_seed: int) -> None:
    """Run the bundled BFL-compatible server (offline use, and tests of BFL clients).

    \b
    Prompts can ask for outcomes: [[request-moderated]], [[content-moderated]], [[error]],
    [[task-not-found]], [[status:Anything]] and [[never]] (stays Pending).
    """
    from kontext_pipeline.server.run import serve as run_server  # noqa: PLC0415
    from kontext_pipeline.server.state import FaultConfig, ServerConfig  # noqa: PLC0415

    faults = FaultConfig(error_rate=error_rate, throttle_rate=throttle_rate, drop_rate=drop_rate,
                         truncate_rate=truncate_rate, jitter=jitter, seed=fault_seed)
    config = ServerConfig(latency=latency, api_keys=frozenset(api_keys) or None,
                          active_limit=active_limit, url_ttl=url_ttl, faults=faults)
    click.echo(f"kontext-pipeline: BFL-compatible server on http://{host}:{port} "
               f"(latency {latency:g} s; Ctrl-C stops it)", err=True)
    run_server(config, host=host, port=port)


def main() -> None:
    """The console-script entry point (exits with the documented code)."""
    cli(prog_name="kontext-pipeline")
