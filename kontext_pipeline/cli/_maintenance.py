"""Maintenance: the ``cache`` commands and ``serve`` (the bundled BFL-compatible server)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from kontext_pipeline.cli._base import (
    cache_dir_option,
    cli,
    load_all,
    open_cache,
    open_shared,
    peeking,
    provider_option,
    shared_cache_options,
    var_option,
)
from kontext_pipeline.cli._output import echo
from kontext_pipeline.errors import CacheError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from kontext_pipeline.store._cache import Cache, CacheEntry
    from kontext_pipeline.store._shared import SharedCache

__all__ = ["cache", "serve"]


@cli.group()
def cache() -> None:
    """Inspect and maintain the result cache."""


@cache.command("info")
@click.argument("recipes", nargs=-1, type=click.Path(path_type=str))
@cache_dir_option
@shared_cache_options
@var_option
@provider_option
def cache_info(*, recipes: Sequence[str], cache_dir: str | None, shared_cache: str | None,
               shared_readonly: bool, variables: dict[str, str], provider: str) -> None:
    """Where the cache is, how many entries and objects, how many bytes; with --shared-cache,
    what the shared cache holds; with RECIPES, how many of their steps each cache holds."""
    store = open_cache(cache_dir)
    store.check_layout(deep=False)
    stats = store.stats()
    click.echo(f"directory: {store.directory}")
    click.echo(f"entries:   {stats.entries}")
    click.echo(f"objects:   {stats.objects} ({stats.bytes / 1e6:.1f} MB)")
    shared = open_shared(shared_cache, readonly=shared_readonly,
                         going_on="what it holds is not known")
    if shared is not None:
        held = shared.stats()
        mode = " (read-only)" if shared.readonly else ""
        click.echo(f"shared:    {shared.url}{mode}")
        if held is not None:
            click.echo(f"results:   {held.results} ({held.bytes / 1e6:.1f} MB)")
    if recipes:
        _held_by_recipes(recipes, store, shared, variables, provider)


def _held_by_recipes(recipes: Sequence[str], store: Cache, shared: SharedCache | None,
                     variables: dict[str, str], provider: str) -> None:
    """Per recipe: its steps the local cache holds, those the shared cache holds besides."""
    from kontext_pipeline.plan._plan import build_plan  # noqa: PLC0415
    from kontext_pipeline.plan._resolution import resolve  # noqa: PLC0415

    for spec in load_all(recipes):
        plan = build_plan(spec, overrides=variables, env=os.environ, provider=provider)
        resolved = resolve(plan, store, shared=peeking(shared))
        local = sum(1 for r in resolved if r.source == "cache")
        remote = sum(1 for r in resolved if r.source == "shared")
        held = f"{local} in the local cache"
        if shared is not None:
            held += f", {remote} more in the shared cache"
        click.echo(f"{spec.file}: {len(resolved)} steps, {held}, "
                   f"{len(resolved) - local - remote} in neither")


@cache.command("ls")
@cache_dir_option
def cache_ls(cache_dir: str | None) -> None:
    """List entries: key, provider, model, size, age and prompt."""
    now = time.time()
    store = open_cache(cache_dir)
    store.check_layout(deep=False)
    for path, entry in store.entries():
        echo(_listed(path, entry, now))


def _listed(path: Path, entry: CacheEntry | None, now: float) -> str:
    """One entry as ``cache ls`` lists it."""
    if entry is None:
        return f"{path.stem[:12]}  (damaged entry)"
    age_h = (now - entry.created_at) / 3600
    prompt = str(entry.request.get("prompt", ""))
    prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
    return (f"{entry.key[:12]}  {entry.provider:<7}  {entry.model:<16}  "
            f"{entry.width}x{entry.height} {entry.format:<4}  {entry.size / 1e3:8.1f} kB  "
            f"{age_h:6.1f} h  {prompt}")


@cache.command("verify")
@cache_dir_option
@shared_cache_options
@click.option("--fix", is_flag=True, help="Remove what is damaged (it is made again when "
                                          "needed), in the shared cache too unless read-only.")
def cache_verify(cache_dir: str | None, shared_cache: str | None, shared_readonly: bool,
                 fix: bool) -> None:
    """Re-hash every object, check every entry against its object, and look for the temporary
    files of writes interrupted over an hour ago and for symbolic links (never followed); with
    --shared-cache, read and check every result the shared cache holds too. Exit 1 if anything
    is damaged or left over."""
    problems = open_cache(cache_dir).verify(fix=fix)
    for problem in problems:
        echo(f"{problem}{' (removed)' if fix else ''}")
    shared = open_shared(shared_cache, readonly=shared_readonly,
                         going_on="it was not verified")
    remote = shared.verify(fix=fix) if shared is not None else []
    removed = fix and shared is not None and not shared.readonly
    for problem in remote or []:
        echo(f"shared cache {problem}{' (removed)' if removed else ''}")
    if remote is None:
        raise CacheError(f"the shared cache {shared_cache} could not be verified")
    left = (0 if fix else len(problems)) + (0 if removed else len(remote or []))
    if left:
        raise CacheError(f"{left} damaged item{'' if left == 1 else 's'} in the cache; "
                         "`kontext-pipeline cache verify --fix` removes them"
                         + (" (the shared cache's without --shared-cache-readonly)"
                            if fix else ""))
    fixed = len(problems) + (len(remote or []) if removed else 0)
    click.echo(f"cache ok{' after removing ' + str(fixed) if fixed else ''}")


@cache.command("gc")
@click.argument("recipes", nargs=-1, type=click.Path(path_type=str))
@cache_dir_option
@var_option
@click.option("--provider", hidden=True, help="Deprecated and ignored: gc keeps what the "
                                               "recipes reach under every provider.")
@click.option("--older-than", type=click.FloatRange(0), metavar="DAYS",
              help="Remove entries created more than DAYS ago.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--yes", is_flag=True, help="Remove paid (bfl) results without asking.")
def cache_gc(*, recipes: Sequence[str], cache_dir: str | None, variables: dict[str, str],
             provider: str | None, older_than: float | None, dry_run: bool, yes: bool) -> None:
    """Remove entries the RECIPES no longer reach under any provider (and/or older than
    --older-than), and the temporary files of writes interrupted over an hour ago. Removing
    paid (bfl) results asks first, unless --yes."""
    from kontext_pipeline.plan._plan import build_plan  # noqa: PLC0415
    from kontext_pipeline.plan._resolution import resolve  # noqa: PLC0415
    from kontext_pipeline.runner._journal import Journal  # noqa: PLC0415
    from kontext_pipeline.runner._providers import PROVIDERS  # noqa: PLC0415

    if provider is not None:
        click.echo("kontext-pipeline: note: cache gc ignores --provider (deprecated): it keeps "
                   "what the recipes reach under every provider", err=True)
    if not recipes and older_than is None:
        raise UsageError("cache gc needs RECIPES to keep, --older-than DAYS, or both")
    store = open_cache(cache_dir)
    store.check_layout(deep=False)  # before anything is asked or listed
    keep: set[str] | None = None
    if recipes:
        specs = load_all(recipes)
        keep = {r.key for name in PROVIDERS for spec in specs
                for r in resolve(build_plan(spec, overrides=variables, env=os.environ,
                                            provider=name), store) if r.hit and r.key}
    unwanted = store.unwanted(keep, None if older_than is None else older_than * 86400)
    paid = [e for _, e in unwanted if e is not None and e.provider != "preview"]
    what = _entries(len(unwanted)) + (
        f" ({len(paid)} paid bfl result{'' if len(paid) == 1 else 's'}, "
        f"{sum(e.credits for e in paid):g} credits)" if paid else "")
    if dry_run:
        now = time.time()
        for path, entry in unwanted:
            echo(_listed(path, entry, now))
        click.echo(f"would remove {what}; nothing was removed (--dry-run)")
        leftovers = len(store.leftovers())
        if leftovers:
            click.echo(f"would remove {_temporaries(leftovers)}")
        return
    if paid and not yes:
        if sys.stdin is None or not sys.stdin.isatty():  # CI, a pipe: no one to ask
            raise UsageError(f"cache gc would remove {what} and there is no terminal to ask; "
                             "pass --yes to remove them, or --dry-run to list them; nothing "
                             "was removed")
        click.confirm(f"Remove {what}?", abort=True)
    removed = store.remove(unwanted)
    click.echo(f"removed {_entries(removed)}")
    leftovers = store.remove_leftovers()
    if leftovers:
        click.echo(f"removed {_temporaries(leftovers)}")
    Journal(store.root / "journal").sweep_claims()  # left by killed runs: nothing to report


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def _temporaries(count: int) -> str:
    return f"{count} temporary file{'' if count == 1 else 's'} of interrupted writes"


@cache.command("clear")
@cache_dir_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir: str | None, yes: bool) -> None:
    """Remove every entry and object."""
    store = open_cache(cache_dir)
    store.check_layout(deep=False)  # before anything is asked
    if not yes:
        click.confirm(f"Remove everything in {store.directory}?", abort=True)
    store.clear()
    click.echo(f"cleared {store.directory}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--latency", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Seconds from submit to a terminal status (the least, with --jitter).")
@click.option("--phases", is_flag=True,
              help="Answer the 2026 API's in-flight statuses: Pending, Reasoning, then "
                   "Generating, each answering at least one poll.")
@click.option("--no-progress", "no_progress", is_flag=True,
              help="Answer in-flight polls with progress null (the API does not promise one).")
@click.option("--unknown-status", metavar="WORD",
              help="Tasks also pass through this in-flight status, one no client knows (before "
                   "Generating with --phases), answering at least one poll.")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY",
              envvar="KONTEXT_SERVE_API_KEY", show_envvar=True,
              help="Accept only these keys (repeatable, or KONTEXT_SERVE_API_KEY with keys "
                   "separated by spaces; default: any non-empty key). Other users of the "
                   "machine can read a command line (ps): prefer the variable.")
@click.option("--public-url", metavar="URL",
              help="The base URL clients reach this server at, for the polling and result "
                   "URLs it hands out (default: the address the request reached, "
                   "http://HOST:PORT; never the request's Host header).")
@click.option("--allow-webhook-host", "webhook_hosts", multiple=True, metavar="HOST",
              help="Also deliver webhooks to this host (repeatable; default: loopback "
                   "addresses only).")
@click.option("--webhooks-anywhere", is_flag=True,
              help="Deliver webhooks to any address (anyone who can submit can then make "
                   "this server post into its network).")
@click.option("--public-stats", is_flag=True,
              help="Answer GET /_stats without a key.")
@click.option("--active-limit", type=click.IntRange(1), default=24, show_default=True,
              help="Active tasks allowed per account (flux-kontext-max: 6) before 429.")
@click.option("--url-ttl", type=float, default=600.0, show_default=True,
              help="Seconds a signed result URL stays valid.")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a 5xx answer.")
@click.option("--submit-error-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability that a submit is refused with 500, 502, 503 "
                   "or 504 (not accepted).")
@click.option("--throttle-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a spurious 429.")
@click.option("--drop-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a dropped connection.")
@click.option("--truncate-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fault injection: probability of a truncated result download.")
@click.option("--jitter", type=click.FloatRange(0), default=0.0,
              help="Spread of latencies: each task's is drawn uniformly from [LATENCY, "
                   "LATENCY + JITTER] seconds, from its model and prompt (and --fault-seed), "
                   "so the same workload meets the same latencies whatever its order.")
@click.option("--fault-seed", type=int, default=0, show_default=True,
              help="Seed of the fault injection's random generator and of --jitter's draws.")
@click.option("--webhook-signature", type=click.Choice(["hmac", "secret", "both"]),
              default="hmac", show_default=True,
              help="How webhooks are signed: X-BFL-Signature (an HMAC of the body), the raw "
                   "secret in X-Webhook-Secret, or both.")
def serve(*, host: str, port: int, latency: float, phases: bool, no_progress: bool,
          unknown_status: str | None,
          api_keys: Sequence[str], public_url: str | None, webhook_hosts: Sequence[str],
          webhooks_anywhere: bool, public_stats: bool, active_limit: int, url_ttl: float,
          error_rate: float,
          submit_error_rate: float, throttle_rate: float, drop_rate: float,
          truncate_rate: float, jitter: float, fault_seed: int, webhook_signature: str) -> None:
    """Run the bundled BFL-compatible server (offline use, and tests of BFL clients).

    \b
    Prompts can ask for outcomes: [[request-moderated]], [[content-moderated]], [[error]],
    [[task-not-found]], [[status:Anything]] and [[never]] (stays Pending).
    """
    from kontext_pipeline.providers.bfl._answers import IN_FLIGHT, TERMINAL  # noqa: PLC0415
    from kontext_pipeline.server._network import checked_public_url  # noqa: PLC0415
    from kontext_pipeline.server._run import serve as run_server  # noqa: PLC0415
    from kontext_pipeline.server._state import FaultConfig, ServerConfig  # noqa: PLC0415
    from kontext_pipeline.server._targets import allowed_host  # noqa: PLC0415

    if unknown_status is not None and (not unknown_status.strip()
                                       or unknown_status in IN_FLIGHT | TERMINAL):
        raise UsageError(f"--unknown-status {unknown_status!r}: give a status the API does not "
                         "document (e.g. Queued); known ones and empty words are refused")
    base = checked_public_url(public_url) if public_url is not None else None
    if public_url is not None and base is None:
        raise UsageError(f"--public-url {public_url!r}: give the base URL clients reach this "
                         "server at, http(s)://HOST[:PORT][/PATH], with no user name, query "
                         "or fragment")
    hosts = {value: allowed_host(value) for value in webhook_hosts}
    for value, allowed in hosts.items():
        if allowed is None:
            raise UsageError(f"--allow-webhook-host {value!r}: give a host name or an IP "
                             "address, with no scheme, port or path")
    faults = FaultConfig(error_rate=error_rate, submit_error_rate=submit_error_rate,
                         throttle_rate=throttle_rate, drop_rate=drop_rate,
                         truncate_rate=truncate_rate, jitter=jitter, seed=fault_seed)
    config = ServerConfig(latency=latency, phases=phases, progress=not no_progress,
                          unknown_status=unknown_status,
                          api_keys=frozenset(api_keys) or None, active_limit=active_limit,
                          url_ttl=url_ttl, faults=faults, webhook_signature=webhook_signature,
                          public_url=base, webhook_hosts=frozenset(filter(None, hosts.values())),
                          webhooks_anywhere=webhooks_anywhere, public_stats=public_stats)
    click.echo(f"kontext-pipeline: BFL-compatible server on http://{host}:{port} "
               f"(latency {latency:g} s; Ctrl-C stops it)", err=True)
    run_server(config, host=host, port=port)
