"""A run, start to finish: look up the cache, refuse to spend when told to, execute, export.

The provider is opened only when something is not cached, so a fully cached run (and every
``--frozen`` run) needs no key and creates no HTTP client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kontext_pipeline._support.files import write_atomic
from kontext_pipeline._support.threads import QuietWorker
from kontext_pipeline.errors import BudgetExceededError, FrozenCacheMissError, OutputError
from kontext_pipeline.outputs._export import check_out_dir, export_outputs
from kontext_pipeline.outputs._manifest import MANIFEST, Manifest, build_manifest, last_run
from kontext_pipeline.outputs._plan_views import cost, dollars, paid
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.outputs._thumbnails import THUMBNAILS, ThumbnailStore
from kontext_pipeline.plan._explain import explain_misses
from kontext_pipeline.plan._plan import Plan
from kontext_pipeline.plan._resolution import Resolved, cost_of_misses, missing_lines, resolve
from kontext_pipeline.providers._base import Provider
from kontext_pipeline.runner._executor import RunEventSink, execute
from kontext_pipeline.runner._journal import Journal
from kontext_pipeline.store._cache import Cache, CacheEntry

__all__ = ["MANIFEST", "REPORT", "PipelineReport", "RunStart", "run_pipelines", "run_plans"]

REPORT = "report.html"


@dataclass(frozen=True)
class RunStart:
    """What the run is about to do, before any request."""

    tasks: int
    cached: int
    credits: int
    collecting: int = 0  # accepted (and paid for) by an interrupted run, not stored yet
    reasons: Mapping[str, str] = field(default_factory=dict)  # task id -> why it runs
    provider: str = "bfl"
    elsewhere: int = 0  # accepted, and being made by another run sharing the cache now

    def describe(self) -> str:
        to_run = self.tasks - self.cached - self.collecting - self.elsewhere
        collect = (f", {self.collecting} to collect from an interrupted run" if self.collecting
                   else "")
        if self.elsewhere:
            collect += f", {self.elsewhere} being made by another run"
        price = cost(self.credits, self.provider)
        return (f"{self.tasks} step{'' if self.tasks == 1 else 's'}: {self.cached} cached, "
                f"{to_run} to run{collect}, "
                f"{'expected cost ' if paid(self.provider) else ''}{price}")


@dataclass(frozen=True)
class PipelineReport:
    """One recipe's run: its records, where its outputs went, and its manifest (as written to
    ``out_dir/manifest.json``)."""

    plan: Plan
    records: tuple[StepRecord, ...]
    out_dir: Path
    manifest: Manifest

    @property
    def failures(self) -> list[str]:
        """``pipeline / variant / step: reason`` of every step that did not finish."""
        return [f"{r.task.pipeline} / {r.task.variant} / {r.task.step}: "
                f"{(r.error or '').removeprefix(f'{r.task.id}: ')}"
                for r in self.records if r.status in ("failed", "skipped")]


async def run_plans(
    plans: Sequence[Plan],
    *,
    cache: Cache,
    out_dirs: Sequence[Path],
    open_provider: Callable[[], Provider],
    frozen: bool = False,
    max_credits: int | None = None,
    on_start: Callable[[RunStart], None] | None = None,
    on_event: RunEventSink | None = None,
    on_note: Callable[[str], None] | None = None,
) -> list[PipelineReport]:
    """Run ``plans`` (exporting plan i into ``out_dirs[i]``) and return their reports.
    ``on_note`` is told of what concerns a whole run (an old output kept in ``--out``).

    Raises :class:`FrozenCacheMissError` or :class:`BudgetExceededError` before any request,
    and a provider error that stops the run (key, credits) as soon as it happens.
    """
    if len(out_dirs) != len(plans):
        raise ValueError("one output directory per plan")
    for out_dir in out_dirs:  # where the results go must be usable before anything is paid
        check_out_dir(out_dir)
    if frozen:  # a folder of the cache that links elsewhere is refused, frozen or not
        cache.check_layout()
    else:
        cache.check_writable()
    resolved = [r for plan in plans for r in resolve(plan, cache)]
    cached = sum(1 for r in resolved if r.hit)
    journal = Journal(cache.root / "journal")
    accepted = [r for r in resolved if not r.hit and r.key is not None
                and journal.find(r.key, r.task.provider) is not None]
    # one whose claim is held was not interrupted: a live run sharing the cache is making it
    elsewhere = sum(1 for r in accepted if r.key is not None and journal.held(r.key))
    credits = cost_of_misses(resolved) - cost_of_misses(accepted)
    if frozen and cached < len(resolved):
        raise FrozenCacheMissError(missing_lines(resolved))
    if max_credits is not None and credits > max_credits:
        raise BudgetExceededError(
            f"the steps that are not cached would cost {credits} credits ({dollars(credits)}), "
            f"more than --max-credits {max_credits}; nothing was submitted")
    if on_start is not None:
        providers = {plan.provider for plan in plans}
        on_start(RunStart(len(resolved), cached, credits, len(accepted) - elsewhere,
                          _reasons(plans, out_dirs, resolved),
                          providers.pop() if len(providers) == 1 else "bfl", elsewhere))
    provider = None if cached == len(resolved) else open_provider()
    # the report's thumbnails are made while the run waits on the API, not after it
    thumbnails = QuietWorker("thumbnails") if provider is not None else None
    store = ThumbnailStore(cache.root / THUMBNAILS)

    def keep_thumbnail(entry: CacheEntry, data: bytes) -> None:
        if thumbnails is not None:
            thumbnails.submit(lambda: store.keep(entry.object, data))

    try:
        known = {r.task.id: r.entry for r in resolved if r.entry is not None}
        records = await execute(plans, cache=cache, provider=provider, on_event=on_event,
                                known=known, journal=journal, on_stored=keep_thumbnail)
    finally:
        if provider is not None:
            await provider.aclose()
        if thumbnails is not None:  # what is left, the report makes on every core
            await asyncio.to_thread(thumbnails.close)
    reports = []
    start = 0
    for plan, out_dir in zip(plans, out_dirs, strict=True):
        mine = records[start:start + len(plan.tasks)]
        start += len(plan.tasks)
        reports.append(_finish(plan, mine, cache, out_dir, on_note))
    return reports


def _reasons(plans: Sequence[Plan], out_dirs: Sequence[Path],
             resolved: Sequence[Resolved]) -> dict[str, str]:
    """Why each step that is not cached runs, compared with each recipe's last run."""
    reasons: dict[str, str] = {}
    for plan, out_dir in zip(plans, out_dirs, strict=True):
        of_plan = [r for r in resolved if r.task.pipeline == plan.spec.name]
        if not all(r.hit for r in of_plan):  # a fully cached run has nothing to explain
            reasons.update(explain_misses(of_plan, last_run(out_dir)))
    return reasons


def _finish(plan: Plan, records: Sequence[StepRecord], cache: Cache, out_dir: Path,
            on_note: Callable[[str], None] | None) -> PipelineReport:
    """Export the outputs, then write the manifest and the report (unless a re-run changed
    nothing: then neither is written again)."""
    exported = export_outputs(plan, records, cache, out_dir, on_warning=on_note)
    manifest = build_manifest(plan, records, exported, base=out_dir)
    encoded = manifest.to_json().encode()
    if not _unchanged(out_dir, encoded):
        try:
            write_atomic(out_dir / MANIFEST, encoded)
        except OSError as exc:
            raise OutputError(f"cannot write {out_dir / MANIFEST}: {exc.strerror or exc}"
                              ) from exc
        _write_report(manifest, cache, out_dir)
    return PipelineReport(plan, tuple(records), out_dir, manifest)


def _write_report(manifest: Manifest, cache: Cache, out_dir: Path) -> None:
    from kontext_pipeline.outputs._html_report import render_report, write_report  # noqa: PLC0415

    write_report(out_dir / REPORT, render_report(manifest, cache=cache, base=out_dir))


def _unchanged(out_dir: Path, manifest_bytes: bytes) -> bool:
    """Whether ``out_dir`` holds this very manifest already, and the report made from it."""
    try:
        return ((out_dir / MANIFEST).read_bytes() == manifest_bytes
                and (out_dir / REPORT).is_file())
    except OSError:
        return False


def run_pipelines(plans: Sequence[Plan], **options: Any) -> list[PipelineReport]:
    """:func:`run_plans` for synchronous callers (it runs its own event loop)."""
    return asyncio.run(run_plans(plans, **options))
