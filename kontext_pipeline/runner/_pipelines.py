"""A run, start to finish: look up the cache and the lock, refuse to spend when told to,
execute, export, write the lock.

The provider is opened only when something has no result yet, so a run that the cache or the
lock (with its exported files) fully holds, and every ``--frozen`` run, needs no key and creates
no HTTP client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kontext_pipeline._support.files import write_atomic
from kontext_pipeline.errors import BudgetExceededError, FrozenCacheMissError, OutputError
from kontext_pipeline.outputs._export import Exported, check_out_dir, export_outputs
from kontext_pipeline.outputs._manifest import MANIFEST, Manifest, build_manifest, last_run
from kontext_pipeline.outputs._plan_views import cost, credits_text, estimated, number, paid
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.outputs._thumbnails import THUMBNAILS, Thumbnail, ThumbnailStore
from kontext_pipeline.plan._explain import explain_misses
from kontext_pipeline.plan._plan import Plan
from kontext_pipeline.plan._resolution import (
    FromShared,
    Resolved,
    cost_of_misses,
    lock_reasons,
    missing_lines,
    resolve,
)
from kontext_pipeline.plan._shards import Shard
from kontext_pipeline.providers._base import Provider
from kontext_pipeline.runner._eager import EagerFinish
from kontext_pipeline.runner._executor import RunEvent, RunEventSink, execute
from kontext_pipeline.runner._journal import Journal
from kontext_pipeline.runner._locking import (
    LOCKING_PROVIDER,
    load_lock,
    lock_exports,
    locked_entry,
    new_lock,
    refill_from_files,
)
from kontext_pipeline.runner._sharing import keep_thumbnail, taking, telling, thumbnail_of
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._lock import Lock, LockedStep, lock_path, update_lock
from kontext_pipeline.store._shared import SharedCache

__all__ = ["MANIFEST", "REPORT", "PipelineReport", "RunStart", "run_pipelines", "run_plans"]

REPORT = "report.html"


@dataclass(frozen=True)
class RunStart:
    """What the run is about to do, before any request."""

    tasks: int
    cached: int
    credits: float
    collecting: int = 0  # accepted (and paid for) by an interrupted run, not stored yet
    reasons: Mapping[str, str] = field(default_factory=dict)  # task id -> why it runs
    provider: str = "bfl"
    elsewhere: int = 0  # accepted, and being made by another run sharing the cache now
    estimate: bool = False  # ``credits`` is an estimate (a step priced per megapixel)
    shared: int = 0  # of the cached: taken from the shared cache

    def describe(self) -> str:
        to_run = self.tasks - self.cached - self.collecting - self.elsewhere
        collect = (f", {self.collecting} to collect from an interrupted run" if self.collecting
                   else "")
        if self.elsewhere:
            collect += f", {self.elsewhere} being made by another run"
        price = cost(self.credits, self.provider, estimate=self.estimate)
        shared = f" ({self.shared} from the shared cache)" if self.shared else ""
        return (f"{self.tasks} step{'' if self.tasks == 1 else 's'}: {self.cached} cached"
                f"{shared}, "
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
    lock: Path | None = None  # the recipe's lock, when the run changed it
    exported: Mapping[tuple[str, str], Exported] = field(default_factory=dict)  # by (variant,
    # step): the file each step's image went to

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
    max_credits: float | None = None,
    on_start: Callable[[RunStart], None] | None = None,
    on_event: RunEventSink | None = None,
    on_note: Callable[[str], None] | None = None,
    lock: bool = True,
    relock: bool = False,
    shared: SharedCache | None = None,
    shard: Shard | None = None,
) -> list[PipelineReport]:
    """Run ``plans`` (exporting plan i into ``out_dirs[i]``) and return their reports.
    ``on_note`` is told of what concerns a whole run (an old output kept in ``--out``), always
    on the event loop's thread (the blocking work, reading locks, hashing and exporting
    files, runs on worker threads, and what it has to tell is passed on afterwards).

    ``lock``: a ``bfl`` run reads each recipe's lock (``<recipe stem>.lock``) first, takes the
    results it and the exported files it lists hold (refilling the cache), and writes it again
    at the end. ``relock``: a ``frozen`` run that ignores a lock it cannot read (``on_note`` is
    told), so as to write it again from the cache and the exported files.

    ``shared``: a task that neither the cache nor the lock holds is taken from this shared cache
    when it holds it (before the run starts, and again before a request), and each new result
    is uploaded to it while the run goes on; the run waits for the uploads before it returns.
    What goes wrong with it is told to ``on_note``, and never fails a step. ``shard``: the
    plans are one shard's (:func:`~kontext_pipeline.plan._shards.shard_plans`), as each
    manifest records.

    Raises :class:`~kontext_pipeline.errors.LockError` when a lock cannot be read,
    :class:`FrozenCacheMissError` or :class:`BudgetExceededError` before any request, and a
    provider error that stops the run (key, credits) as soon as it happens.
    """
    frozen = frozen or relock
    if len(out_dirs) != len(plans):
        raise ValueError("one output directory per plan")
    for out_dir in out_dirs:  # where the results go must be usable before anything is paid
        check_out_dir(out_dir)
    if frozen:  # a folder of the cache that links elsewhere is refused, frozen or not
        cache.check_layout()
    else:
        cache.check_writable()
    loop = asyncio.get_running_loop()

    def note_soon(note: str) -> None:  # from any thread, told on the loop's
        loop.call_soon_threadsafe(_say, on_note, note)

    with telling(shared, note_soon):
        try:
            return await _run_resolved(plans, cache=cache, out_dirs=out_dirs, frozen=frozen,
                                       max_credits=max_credits, open_provider=open_provider,
                                       on_start=on_start, on_event=on_event, on_note=on_note,
                                       lock=lock, relock=relock, shared=shared, shard=shard)
        finally:
            if shared is not None:  # the uploads went on meanwhile; each is bounded
                await asyncio.to_thread(shared.close)


async def _run_resolved(
    plans: Sequence[Plan], *, cache: Cache, out_dirs: Sequence[Path],
    open_provider: Callable[[], Provider], frozen: bool, max_credits: float | None,
    on_start: Callable[[RunStart], None] | None, on_event: RunEventSink | None,
    on_note: Callable[[str], None] | None, lock: bool, relock: bool,
    shared: SharedCache | None, shard: Shard | None,
) -> list[PipelineReport]:
    # reading the locks and hashing files is blocking work: off the event loop (a webhook
    # listener may be serving on it), each note told on the loop's thread afterwards
    notes: list[str] = []
    store = ThumbnailStore(cache.root / THUMBNAILS)
    locks, resolved, held = await asyncio.to_thread(
        _resolve, plans, cache, lock=lock, relock=relock, on_note=notes.append,
        shared=taking(shared, cache, keep_thumbnail(store)))
    _tell(notes, on_note)
    cached = sum(1 for r in resolved if r.hit)
    journal = Journal(cache.root / "journal")
    accepted = [r for r in resolved if not r.hit and r.key is not None
                and journal.find(r.key, r.task.provider) is not None]
    # one whose claim is held was not interrupted: a live run sharing the cache is making it
    elsewhere = sum(1 for r in accepted if r.key is not None and journal.held(r.key))
    credits = round(cost_of_misses(resolved) - cost_of_misses(accepted), 2)
    taken = {r.task.id for r in accepted}
    estimate = estimated(r.task for r in resolved if not r.hit and r.task.id not in taken)
    if frozen and cached < len(resolved):
        raise FrozenCacheMissError(missing_lines(resolved))
    if max_credits is not None and credits > max_credits:
        raise BudgetExceededError(
            f"the steps that are not cached would cost "
            f"{credits_text(credits, estimate=estimate)}, "
            f"more than --max-credits {number(max_credits)}; nothing was submitted")
    if on_start is not None:
        providers = {plan.provider for plan in plans}
        on_start(RunStart(len(resolved), cached, credits, len(accepted) - elsewhere,
                          _reasons(plans, out_dirs, resolved),
                          providers.pop() if len(providers) == 1 else "bfl", elsewhere,
                          estimate, sum(1 for r in resolved if r.source == "shared")))
    _warn(resolved, on_event)
    provider = None if cached == len(resolved) else open_provider()
    known = {r.task.id: r.entry if r.entry is not None
             else locked_entry(r.task, held[r.task.id])
             for r in resolved if r.entry is not None or r.task.id in held}
    # each new result's files and thumbnail are made while the run waits on the API
    eager = (EagerFinish(plans, out_dirs, cache=cache, store=store, known=known)
             if provider is not None else None)

    def stored(entry: CacheEntry, data: bytes) -> None:
        if shared is not None:  # with its thumbnail, for the report of whoever takes it
            shared.upload(entry, data, lambda: thumbnail_of(store, entry, data))

    try:
        try:
            records = await execute(plans, cache=cache, provider=provider, on_event=on_event,
                                    known=known, journal=journal, on_stored=stored,
                                    shared=shared, on_shared_extra=keep_thumbnail(store),
                                    on_settled=eager.settled if eager is not None else None)
        finally:
            if provider is not None:
                await provider.aclose()
        return await _finish_all(plans, records, out_dirs, locks, cache, lock=lock,
                                 held=held, on_note=on_note, shard=shard, eager=eager)
    finally:
        if eager is not None:  # what was written ahead and not placed goes
            await asyncio.to_thread(eager.close)


async def _finish_all(plans: Sequence[Plan], records: Sequence[StepRecord],
                      out_dirs: Sequence[Path], locks: Sequence[Lock | None], cache: Cache, *,
                      lock: bool, held: Mapping[str, LockedStep],
                      on_note: Callable[[str], None] | None, shard: Shard | None,
                      eager: EagerFinish | None) -> list[PipelineReport]:
    """Export each recipe's results (moving the files ``eager`` wrote ahead into place) and
    write its manifest, report and lock, on a worker thread (the notes told on the loop's
    afterwards)."""
    reports = []
    start = 0
    notes: list[str] = []
    for plan, out_dir, old in zip(plans, out_dirs, locks, strict=True):
        mine = records[start:start + len(plan.tasks)]
        start += len(plan.tasks)
        try:
            report = await asyncio.to_thread(_finish, plan, mine, cache, out_dir,
                                             on_note=notes.append, held=held, old=old,
                                             shard=shard, lock=lock, eager=eager)
        finally:
            _tell(notes, on_note)
        reports.append(report)
    return reports


def _say(on_note: Callable[[str], None] | None, note: str) -> None:
    if on_note is not None:
        on_note(note)


def _tell(notes: list[str], on_note: Callable[[str], None] | None) -> None:
    """Tell ``on_note`` of the notes gathered off the event loop, on its thread."""
    said, notes[:] = notes[:], []
    for note in said:
        _say(on_note, note)


def _resolve(plans: Sequence[Plan], cache: Cache, *, lock: bool, relock: bool,
             on_note: Callable[[str], None], shared: FromShared | None
             ) -> tuple[list[Lock | None], list[Resolved], dict[str, LockedStep]]:
    """Each recipe's lock (None: none, or ``lock`` is off); what the cache and the locks hold
    of each task (the cache refilled from the files the locks list); and the locks' records
    of the tasks they alone hold (no bytes: see :mod:`..plan._resolution`)."""
    locks = [load_lock(plan, relock=relock, on_note=on_note) if lock else None
             for plan in plans]
    resolved = [r for plan, old in zip(plans, locks, strict=True)
                for r in resolve(plan, cache, old, from_files=refill_from_files(
                    cache, lock_path(plan.spec.path).parent), shared=shared)]
    held = {r.task.id: r.locked for r in resolved if r.source == "lock" and r.locked}
    return locks, resolved, held


def _warn(resolved: Sequence[Resolved], on_event: RunEventSink | None) -> None:
    """Tell of each damaged cache entry the lock's exported files stood in for (and mended),
    and of each result the cache and the lock disagree on."""
    for item in resolved:
        if on_event is None:
            continue
        if item.warning is not None:
            on_event(RunEvent("warning", item.task, message=item.warning))
        elif item.source in ("files", "shared") and item.problem:
            stand_in = ("its exported file" if item.source == "files"
                        else "the shared cache's copy")
            on_event(RunEvent("warning", item.task, message=(
                f"{item.problem.removesuffix('; the step runs again')}; {stand_in} stood "
                "in for it")))


def _reasons(plans: Sequence[Plan], out_dirs: Sequence[Path],
             resolved: Sequence[Resolved]) -> dict[str, str]:
    """Why each step that is not cached runs, compared with each recipe's last run."""
    reasons: dict[str, str] = {}
    for plan, out_dir in zip(plans, out_dirs, strict=True):
        of_plan = [r for r in resolved if r.task.pipeline == plan.spec.name]
        if not all(r.hit for r in of_plan):  # a fully cached run has nothing to explain
            reasons.update(explain_misses(of_plan, last_run(out_dir)))
            reasons.update(lock_reasons(of_plan))
    return reasons


def _finish(plan: Plan, records: Sequence[StepRecord], cache: Cache, out_dir: Path, *,
            on_note: Callable[[str], None] | None, held: Mapping[str, LockedStep],
            old: Lock | None, shard: Shard | None, lock: bool,
            eager: EagerFinish | None) -> PipelineReport:
    """Export the outputs, then write the manifest, the lock (if ``lock``) and the report
    (unless a re-run changed nothing: then neither the manifest nor the report is written
    again). A step the lock holds without its bytes is not exported: no file holds its image
    (its last export, if any, stays). The files the lock (``old``) lists count as exported by
    the last run when no manifest says what it did (a fresh checkout), and those of the
    variants whose records the run keeps stay. ``eager``: what the run made ahead, each part
    waited for where it is needed (the thumbnails last: the lock is written meanwhile)."""
    recorded, kept = lock_exports(plan, old, out_dir)
    if eager is not None:
        eager.wait_staged()
    exported = export_outputs(plan, [r for r in records if r.task.id not in held], cache,
                              out_dir, on_warning=on_note, recorded=recorded, keep=kept,
                              staging=eager.stagings[plan.spec.name] if eager else None)
    manifest = build_manifest(plan, records, exported, base=out_dir, shard=shard)
    encoded = manifest.to_json().encode()
    unchanged = _unchanged(out_dir, encoded)
    if not unchanged:
        try:
            write_atomic(out_dir / MANIFEST, encoded)
        except OSError as exc:
            raise OutputError(f"cannot write {out_dir / MANIFEST}: {exc.strerror or exc}"
                              ) from exc
    report = PipelineReport(plan, tuple(records), out_dir, manifest, exported=exported)
    if lock:
        report = _relocked(report, old, held)
    if not unchanged:
        if eager is not None:
            eager.wait_thumbnails()
        _write_report(manifest, cache, out_dir, eager.thumbnails if eager else {})
    return report


def _relocked(report: PipelineReport, old: Lock | None,
              held: Mapping[str, LockedStep]) -> PipelineReport:
    """Write the recipe's lock from the run's records; the report says where if it changed
    (a run of another provider than ``bfl`` writes none)."""
    if report.plan.provider != LOCKING_PROVIDER:
        return report
    plan = report.plan
    path = lock_path(plan.spec.path)

    def make(current: Lock | None) -> Lock:
        # the lock as it is now: a run of other variants may have written it since this one
        # read it, and what it wrote stays
        if current is not None and current.provider != plan.provider:
            current = None
        return new_lock(plan, report.records, report.exported, out_dir=report.out_dir,
                        old=current, held=held)

    try:
        changed = update_lock(path, make, recipe=plan.spec.file, unreadable=old)
    except OSError as exc:
        raise OutputError(f"cannot write the lock {path}: {exc.strerror or exc}; make its "
                          "folder writable, or run with --no-lock") from exc
    return replace(report, lock=path if changed else None)


def _write_report(manifest: Manifest, cache: Cache, out_dir: Path,
                  thumbnails: Mapping[str, Thumbnail]) -> None:
    from kontext_pipeline.outputs._html_report import render_report, write_report  # noqa: PLC0415

    write_report(out_dir / REPORT, render_report(manifest, cache=cache, base=out_dir,
                                                 thumbnails=thumbnails))


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
