"""Maintenance: the ``cache`` commands and ``serve`` (the bundled BFL-compatible server)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from kontext_pipeline.cli.base import (
    cache_dir_option,
    cli,
    load_all,
    open_cache,
    provider_option,
    var_option,
)
from kontext_pipeline.errors import CacheError, UsageError

__all__ = ["cache", "serve"]


@cli.group()
def cache() -> None:
    """Inspect and maintain the result cache."""


@cache.command("info")
@cache_dir_option
def cache_info(cache_dir: str | None) -> None:
    """Where the cache is, how many entries and objects, how many bytes."""
    store = open_cache(cache_dir)
    stats = store.stats()
    click.echo(f"directory: {store.directory}")
    click.echo(f"entries:   {stats.entries}")
    click.echo(f"objects:   {stats.objects} ({stats.bytes / 1e6:.1f} MB)")


@cache.command("ls")
@cache_dir_option
def cache_ls(cache_dir: str | None) -> None:
    """List entries: key, provider, model, size, age and prompt."""
    import time  # noqa: PLC0415

    now = time.time()
    for path, entry in open_cache(cache_dir).entries():
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
@cache_dir_option
@click.option("--fix", is_flag=True, help="Remove what is damaged (it is made again when "
                                          "needed).")
def cache_verify(cache_dir: str | None, fix: bool) -> None:
    """Re-hash every object, check every entry, and look for the temporary files of writes
    interrupted over an hour ago; exit 1 if anything is damaged or left over."""
    problems = open_cache(cache_dir).verify(fix=fix)
    for problem in problems:
        click.echo(f"{problem}{' (removed)' if fix else ''}")
    if problems and not fix:
        raise CacheError(f"{len(problems)} damaged item{'' if len(problems) == 1 else 's'} "
                         "in the cache; `kontext-pipeline cache verify --fix` removes them")
    click.echo(f"cache ok{' after removing ' + str(len(problems)) if problems else ''}")


@cache.command("gc")
@click.argument("recipes", nargs=-1, type=click.Path(path_type=str))
@cache_dir_option
@var_option
@provider_option
@click.option("--older-than", type=click.FloatRange(0), metavar="DAYS",
              help="Remove entries created more than DAYS ago.")
def cache_gc(*, recipes: Sequence[str], cache_dir: str | None, variables: dict[str, str],
             provider: str, older_than: float | None) -> None:
    """Remove entries the RECIPES no longer reach (and/or older than --older-than), and the
    temporary files of writes interrupted over an hour ago."""
    from kontext_pipeline.plan import build_plan  # noqa: PLC0415
    from kontext_pipeline.resolution import resolve  # noqa: PLC0415

    if not recipes and older_than is None:
        raise UsageError("cache gc needs RECIPES to keep, --older-than DAYS, or both")
    store = open_cache(cache_dir)
    keep: set[str] | None = None
    if recipes:
        plans = [build_plan(spec, overrides=variables, env=os.environ, provider=provider)
                 for spec in load_all(recipes)]
        keep = {r.key for plan in plans for r in resolve(plan, store) if r.hit and r.key}
    removed = store.remove_entries(keep, None if older_than is None else older_than * 86400)
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'}")
    leftovers = store.remove_leftovers()
    if leftovers:
        click.echo(f"removed {leftovers} temporary file{'' if leftovers == 1 else 's'} of "
                   "interrupted writes")


@cache.command("clear")
@cache_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir: str | None, yes: bool) -> None:
    """Remove every entry and object."""
    store = open_cache(cache_dir)
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
@click.option("--webhook-signature", type=click.Choice(["hmac", "secret", "both"]),
              default="hmac", show_default=True,
              help="How webhooks are signed: X-BFL-Signature (an HMAC of the body), the raw "
                   "secret in X-Webhook-Secret, or both.")
def serve(*, host: str, port: int, latency: float, api_keys: Sequence[str], active_limit: int,
          url_ttl: float, error_rate: float, throttle_rate: float, drop_rate: float,
          truncate_rate: float, jitter: float, fault_seed: int, webhook_signature: str) -> None:
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
                          active_limit=active_limit, url_ttl=url_ttl, faults=faults,
                          webhook_signature=webhook_signature)
    click.echo(f"kontext-pipeline: BFL-compatible server on http://{host}:{port} "
               f"(latency {latency:g} s; Ctrl-C stops it)", err=True)
    run_server(config, host=host, port=port)
