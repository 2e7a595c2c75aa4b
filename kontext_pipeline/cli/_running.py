"""``run``: execute recipes, show progress, print the summary or the manifest."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import click

from kontext_pipeline.cli._base import (
    cache_dir_option,
    cli,
    open_cache,
    open_shared,
    provider_option,
    shared_cache_options,
    var_option,
)
from kontext_pipeline.cli._output import echo, echo_json
from kontext_pipeline.cli._sharding import shard_option
from kontext_pipeline.errors import StepsFailedError, UsageError

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

    from kontext_pipeline.cli._progress import Progress
    from kontext_pipeline.plan._shards import Shard
    from kontext_pipeline.providers._inbox import Webhook
    from kontext_pipeline.runner._pipelines import PipelineReport

__all__ = ["run"]


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", type=click.Path(file_okay=False, path_type=str),
              help="Output directory (default: out/<recipe name>; with several recipes, "
                   "DIR/<recipe name>).")
@var_option
@provider_option
@click.option("--api-base", envvar="BFL_API_BASE", default=None,
              help="BFL API base URL (or BFL_API_BASE; default https://api.bfl.ai).")
@cache_dir_option
@shared_cache_options
@shard_option
@click.option("--concurrency", type=click.IntRange(1, 24), default=24, show_default=True,
              help="Most tasks active at once (flux-kontext-max: at most 6).")
@click.option("--frozen", is_flag=True,
              help="Call no provider: every step must be cached (or held by the lock and its "
                   "exported files), else exit 3.")
@click.option("--relock", is_flag=True,
              help="With --frozen: rewrite each recipe's lock from the cache and the exported "
                   "files, without any request (an unreadable lock is ignored).")
@click.option("--no-lock", "no_lock", is_flag=True,
              help="Neither read nor write the recipe's lock (<recipe stem>.lock).")
@click.option("--max-credits", type=click.FloatRange(0), default=None,
              help="Refuse (exit 3) if the steps that are not cached would cost more "
                   "(fractions too: FLUX.2 is priced per megapixel).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the manifest as JSON on stdout, and nothing else.")
@click.option("--webhook-url", metavar="URL", default=None,
              help="Have the API push each result to URL (public; it must reach "
                   "--webhook-listen); polling slows to a fallback.")
@click.option("--webhook-listen", metavar="HOST:PORT", default=None,
              help="Where to receive the pushed results (with --webhook-url).")
def run(*, recipes: Sequence[str], out: str | None, variables: dict[str, str], provider: str,
        api_base: str | None, cache_dir: str | None, shared_cache: str | None,
        shared_readonly: bool, shard: Shard | None, concurrency: int, frozen: bool,
        relock: bool, no_lock: bool, max_credits: float | None, as_json: bool,
        webhook_url: str | None, webhook_listen: str | None) -> None:
    """Run recipes: every step cached by its inputs, outputs and manifest.json in --out, and
    what was made recorded in the lock beside each recipe."""
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from kontext_pipeline.plan._memo import plan_recipes  # noqa: PLC0415
    from kontext_pipeline.plan._shards import shard_plans  # noqa: PLC0415
    from kontext_pipeline.runner._pipelines import run_plans  # noqa: PLC0415
    from kontext_pipeline.runner._providers import open_provider  # noqa: PLC0415

    webhook = _webhook(webhook_url, webhook_listen)
    _check_lock_options(frozen=frozen, relock=relock, no_lock=no_lock, provider=provider)
    planned = plan_recipes(recipes, overrides=variables, environ=os.environ, provider=provider)
    plans = shard_plans(planned, shard)
    out_dirs = _out_dirs([p.spec.name for p in planned], out)
    store = open_cache(cache_dir)
    shared = open_shared(shared_cache, readonly=shared_readonly)
    display = _progress(as_json)

    async def run_all() -> list[PipelineReport]:
        async with contextlib.AsyncExitStack() as stack:
            if webhook is not None and webhook_listen is not None and not frozen:
                from kontext_pipeline.runner._webhooks import receiving  # noqa: PLC0415

                await stack.enter_async_context(receiving(webhook, webhook_listen,
                                                          display.note))
            return await run_plans(
                plans, cache=store, out_dirs=out_dirs, frozen=frozen, max_credits=max_credits,
                open_provider=lambda: open_provider(provider, environ=os.environ,
                                                    api_base=api_base, concurrency=concurrency,
                                                    webhook=webhook),
                on_start=display.start, on_event=display.event, on_note=display.note,
                lock=not no_lock, relock=relock, shared=shared, shard=shard)

    try:
        with _sigterm_interrupts():
            reports = asyncio.run(run_all())
    finally:
        display.close()
    if as_json:
        documents = [r.manifest.as_dict() for r in reports]
        echo_json(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2,
                             ensure_ascii=False))
    else:
        from kontext_pipeline.cli._progress import summary  # noqa: PLC0415

        for report in reports:
            echo(summary(report) + (f", {report.lock}" if report.lock is not None else ""))
    if shared is not None and shared.uploaded:
        echo(f"shared cache {shared.url}: {shared.uploaded} new result"
             f"{'' if shared.uploaded == 1 else 's'} uploaded", err=True)
    failures = [line for report in reports for line in report.failures]
    if failures:
        raise StepsFailedError(failures)


def _check_lock_options(*, frozen: bool, relock: bool, no_lock: bool, provider: str) -> None:
    if not relock:
        return
    if not frozen:
        raise UsageError("--relock rewrites the lock without any request: use it with --frozen "
                         "(kontext-pipeline run --frozen --relock RECIPE)")
    if no_lock:
        raise UsageError("--relock writes the lock and --no-lock writes none: use one of them")
    if provider != "bfl":
        raise UsageError(f"--relock: a run of the {provider} provider has no lock; only "
                         "--provider bfl runs read and write one")


def _webhook(url: str | None, listen: str | None) -> Webhook | None:
    """The run's webhook (with a fresh secret), if both options are given."""
    if url is None and listen is None:
        return None
    if url is None or listen is None:
        raise UsageError("--webhook-url and --webhook-listen go together: the API pushes to "
                         "the URL, and the run receives on HOST:PORT")
    from kontext_pipeline.providers._inbox import Webhook  # noqa: PLC0415
    from kontext_pipeline.runner._webhooks import check_url, parse_listen  # noqa: PLC0415

    parse_listen(listen)
    return Webhook(check_url(url))


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a CI job's time limit, ``kill``) stops a run as Ctrl-C does: what finished
    stays cached and accepted requests stay journalled, for the next run to collect."""

    def interrupt(_signal: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _out_dirs(names: Sequence[str], out: str | None) -> list[Path]:
    from pathlib import Path  # noqa: PLC0415

    if len(set(names)) != len(names):
        raise UsageError("two recipes have the same name; run them separately or rename one")
    if len(names) == 1:
        return [Path(out) if out else Path("out") / names[0]]
    return [Path(out or "out") / name for name in names]


def _progress(as_json: bool) -> Progress:
    from kontext_pipeline.cli._progress import (  # noqa: PLC0415
        LiveProgress,
        PlainProgress,
        SilentProgress,
    )

    if as_json:
        return SilentProgress()
    if sys.stderr.isatty():
        from rich.console import Console  # noqa: PLC0415

        return LiveProgress(Console(stderr=True))
    return PlainProgress(lambda line: echo(line, err=True))
