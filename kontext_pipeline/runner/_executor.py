"""The scheduler: every task starts as soon as its input images exist.

Steps of one variant run in order, each output feeding the next; variants, branches and recipes
run concurrently, bounded by the provider's active-task limits. Each result is stored in the
cache before any step that reads it starts, and each request the API accepts is journalled until
then, so an interrupted run resumes where it stopped and pays for no step twice. Steps that make
the very same request (the same cache key) share one, and so do runs sharing the cache: each
key's request is made under its claim (see :mod:`..store._claims`), and a run that finds
a key claimed waits for the claim (holding no active-task slot), then takes the result from the
cache, or collects the journalled task of a run that died. A claim is an open file, so a run
holds only a few more at once than the provider has active-task slots (see :func:`claim_bound`):
the other ready tasks wait, holding none. The executor emits events and never prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kontext_pipeline.errors import ProviderError, TaskFailedError
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.providers._base import Accepted, EditRequest, Provider, ProviderEvent
from kontext_pipeline.providers._policies import DEFAULT_TOTAL_LIMIT
from kontext_pipeline.recipe._models import MODELS
from kontext_pipeline.runner._journal import Journal, JournalEntry
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._claims import LOCKS, Claim
from kontext_pipeline.store._shared import SharedCache

__all__ = ["RunEvent", "RunEventSink", "SettledSink", "StepRecord", "StoredSink", "claim_bound",
           "execute"]

@dataclass(frozen=True)
class RunEvent:
    """Something happened to a task: ``cached``, ``waiting`` (for another run making the same
    request), ``queued``, ``submitted``, ``polling``, ``retrying``, ``downloading``, ``done``,
    ``failed``, ``skipped`` or ``warning``."""

    kind: str
    task: Task
    progress: float | None = None
    message: str | None = None


RunEventSink = Callable[[RunEvent], None]


WAITING = "another run sharing the cache is making this image; waiting for it"
_FIRST_WAIT = 0.05  # seconds between looks at a claim held by another run, growing…
_LONGEST_WAIT = 1.0  # …up to this

StoredSink = Callable[[CacheEntry, bytes], None]
"""Told of each new result once it is in the cache (with its bytes, still in memory)."""

SettledSink = Callable[[StepRecord], None]
"""Told of each task's record as soon as it is settled (done, failed, skipped or missing)."""

CLAIM_MARGIN = 8
"""Claims a run holds beyond the provider's active-task slots: for steps that have given back
their slot and are downloading or storing their result (they keep their claim until stored)."""


def claim_bound(provider: Provider | None) -> int:
    """How many claims (open files) a run holds at most at once: the provider's active-task
    limit (its limiter's ``total``, where it has one; else the API's default) plus a margin."""
    total = getattr(getattr(provider, "limiter", None), "total", None)
    slots = total if isinstance(total, int) and total > 0 else DEFAULT_TOTAL_LIMIT
    return slots + CLAIM_MARGIN


class _Run:
    def __init__(self, *, cache: Cache, provider: Provider | None, on_event: RunEventSink,
                 known: Mapping[str, CacheEntry], journal: Journal | None,
                 on_stored: StoredSink | None, shared: SharedCache | None,
                 on_shared_extra: StoredSink | None) -> None:
        self.cache = cache
        self.shared = shared
        self.on_shared_extra = on_shared_extra
        self.provider = provider
        self.emit = on_event
        self.known = known
        self.journal = journal
        self.on_stored = on_stored
        self.results: dict[tuple[str, str, str], asyncio.Future[StepRecord]] = {}
        self.requests: dict[str, asyncio.Future[StepRecord]] = {}  # by key, while in flight
        self.unlocked = False  # warned already that claims are not exclusive here
        self.unpriced = False  # warned already that the API echoed no cost for a FLUX.2 step
        # Each step holds one of these from before it claims its key until it lets the claim
        # go; it never waits for one while holding a claim, and holds one claim at a time (so
        # no two steps, of one run or of two, ever wait on each other).
        self.claims = asyncio.Semaphore(claim_bound(provider))

    def future(self, task: Task, step: str) -> asyncio.Future[StepRecord]:
        return self.results[(task.pipeline, task.variant, step)]

    async def run(self, task: Task) -> StepRecord:
        inputs: list[tuple[Path, str]] = []
        for image in task.images:
            if image.path is not None and image.sha256 is not None:
                inputs.append((image.path, image.sha256))
                continue
            # shielded: cancelling this task (Ctrl-C) must not cancel the parent's record,
            # which the parent itself may be about to set (see execute)
            parent = await asyncio.shield(self.future(task, image.name))
            if not parent.ok or parent.entry is None:
                self.emit(RunEvent("skipped", task, message=f"'{image.name}' did not finish"))
                return StepRecord(task, "skipped", "miss",
                                  error=f"skipped: its input '{image.name}' did not finish")
            inputs.append((self.cache.object_path(parent.entry.object), parent.entry.object))
        hashes = tuple(digest for _, digest in inputs)
        known = self.known.get(task.id)
        if known is not None:  # looked up moments ago, before the run started
            self.emit(RunEvent("cached", task))
            return StepRecord(task, "done", "hit", known.key, hashes, known)
        key = task.key(hashes)
        lookup = self.cache.lookup(key, task.params.output_format)
        if lookup.problem:
            self.emit(RunEvent("warning", task, message=lookup.problem))
        if lookup.entry is not None:
            self.emit(RunEvent("cached", task))
            return StepRecord(task, "done", "hit", key, hashes, lookup.entry)
        if self.shared is not None and self.shared.on:  # made elsewhere since the run began?
            entry = await asyncio.to_thread(self.shared.fetch_into, self.cache, key,
                                            task.params.output_format,
                                            on_extra=self.on_shared_extra)
            if entry is not None:
                self.emit(RunEvent("cached", task))
                return StepRecord(task, "done", "hit", key, hashes, entry)
        if self.provider is None:
            return StepRecord(task, "missing", "miss", key, hashes,
                              error=lookup.problem or "not in the cache")
        return await self.once(self.provider, task, key, tuple(p for p, _ in inputs), hashes)

    async def once(self, provider: Provider, task: Task, key: str, paths: tuple[Path, ...],
                   hashes: tuple[str, ...]) -> StepRecord:
        """Make the request of ``key``, or wait for the step of this run already making it."""
        twin = self.requests.get(key)
        if twin is not None:
            first = await asyncio.shield(twin)
            if not first.ok:
                self.emit(RunEvent("failed", task, message=first.error))
                return replace(first, task=task, duration_s=0.0)
            self.emit(RunEvent("cached", task))
            return replace(first, task=task, cache="hit", credits=0, duration_s=0.0)
        future = self.requests[key] = asyncio.get_running_loop().create_future()
        try:
            record = await self.claimed(provider, task, key, paths, hashes)
        except BaseException:
            future.cancel()
            raise
        future.set_result(record)
        return record

    async def claimed(self, provider: Provider, task: Task, key: str, paths: tuple[Path, ...],
                      hashes: tuple[str, ...]) -> StepRecord:
        """Make the request of ``key`` under its claim, unless a run sharing the cache stored
        its result since the lookup (it held the claim until then)."""
        if self.journal is None:  # no journal, no claims: a run of its own
            return await self.call(provider, task, key, paths, hashes)
        if self.claims.locked():  # as many claims held as there are slots, and a few more
            self.emit(RunEvent("queued", task))
        async with self.claims:
            claim = await self.claim(self.journal, task, key)
            try:
                # its problem, if any, was reported a moment ago
                lookup = self.cache.lookup(key, task.params.output_format)
                if lookup.entry is not None:
                    self.emit(RunEvent("cached", task))
                    return StepRecord(task, "done", "hit", key, hashes, lookup.entry)
                return await self.call(provider, task, key, paths, hashes)
            finally:
                claim.release()

    async def claim(self, journal: Journal, task: Task, key: str) -> Claim:
        """The claim of ``key``, once no other run holds it (polled: a blocking lock would hold
        a thread of the default executor, of which there are few)."""
        delay = _FIRST_WAIT
        while (claim := journal.claim(key)) is None:
            if delay == _FIRST_WAIT:
                self.emit(RunEvent("waiting", task, message=WAITING))
            await asyncio.sleep(delay)
            delay = min(_LONGEST_WAIT, delay * 1.5)
        if claim.problem is not None and LOCKS and not self.unlocked:
            self.unlocked = True
            self.emit(RunEvent("warning", task, message=(
                f"{claim.problem}; runs sharing this cache may each pay for a step that "
                "neither has finished")))
        return claim

    async def call(self, provider: Provider, task: Task, key: str, paths: tuple[Path, ...],
                   hashes: tuple[str, ...]) -> StepRecord:
        params = task.params
        request = EditRequest(model=task.model, prompt=task.prompt, seed=task.seed,
                              aspect_ratio=params.aspect_ratio,
                              output_format=params.output_format,
                              safety_tolerance=params.safety_tolerance,
                              prompt_upsampling=params.prompt_upsampling, width=params.width,
                              height=params.height, steps=params.steps,
                              guidance=params.guidance, images=paths, image_sha256=hashes,
                              label=task.id)

        def relay(event: ProviderEvent) -> None:
            self.emit(RunEvent(event.kind, task, event.progress, event.message))

        journalled = self.journal.find(key, provider.name) if self.journal else None
        started = time.monotonic()
        try:
            result = await provider.generate(
                request, relay, resume=journalled.accepted if journalled else None,
                on_accepted=lambda accepted: self.remember(task, key, provider.name, accepted))
        except ProviderError as error:
            if isinstance(error, TaskFailedError):  # ended for good: nothing to collect later
                self.forget(key)
            if error.stops_run:
                raise
            self.emit(RunEvent("failed", task, message=str(error)))
            return StepRecord(task, "failed", "miss", key, hashes, error=str(error),
                              duration_s=time.monotonic() - started)
        credits = result.cost if result.cost is not None else task.credits
        if result.cost is None and not MODELS[task.model].price.per_image and not self.unpriced:
            self.unpriced = True  # once per run: the answer's form is the API's, not the step's
            self.emit(RunEvent("warning", task, message=(
                f"the API echoed no cost for this step; its estimate, ~{task.credits:g} "
                "credits, is recorded instead (and so for any other step of this run priced "
                "per megapixel without one)")))
        entry = CacheEntry(
            key=key, object=_sha256(result.image), size=len(result.image),
            format=result.image_format, width=result.width, height=result.height,
            provider=task.provider, model=task.model,
            seed=result.seed if result.seed is not None else task.seed,
            request_id=result.request_id, credits=credits,
            duration_s=round(result.duration_s, 3), created_at=time.time(),
            request=task.request_document(hashes))
        await asyncio.to_thread(self.cache.store, result.image, entry)
        self.forget(key)
        if self.on_stored is not None:
            self.on_stored(entry, result.image)
        return StepRecord(task, "done", "miss", key, hashes, entry, credits=credits,
                          duration_s=time.monotonic() - started)

    async def remember(self, task: Task, key: str, provider: str, accepted: Accepted) -> None:
        """Journal an accepted request before its result is awaited."""
        if self.journal is None:
            return
        entry = JournalEntry(key=key, provider=provider, label=task.id, accepted=accepted)
        try:
            await asyncio.to_thread(self.journal.record, entry)
        except OSError as exc:  # the run goes on; only an interruption would cost it
            self.emit(RunEvent("warning", task, message=(
                f"cannot journal task {accepted.task_id} in {self.journal.directory} "
                f"({exc.strerror or exc}): if this run is interrupted, the step is paid for "
                "again")))

    def forget(self, key: str) -> None:
        if self.journal is not None:
            # should this fail, the stale entry costs a later run one poll, which then forgets it
            with contextlib.suppress(OSError):
                self.journal.remove(key)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def execute(
    plans: Sequence[Plan],
    *,
    cache: Cache,
    provider: Provider | None,
    on_event: RunEventSink | None = None,
    known: Mapping[str, CacheEntry] | None = None,
    journal: Journal | None = None,
    on_stored: StoredSink | None = None,
    shared: SharedCache | None = None,
    on_shared_extra: StoredSink | None = None,
    on_settled: SettledSink | None = None,
) -> list[StepRecord]:
    """Run every task of ``plans``; returns one record per task, in plan order.

    Without a provider nothing is requested: a task that is not cached is ``missing``. A failed
    task fails (skips) the tasks downstream of it in its variant; other variants go on. An error
    that stops the run (a refused key, no credits) cancels everything and is raised.
    ``known`` maps task ids to the cache entries already found for them (not looked up again).
    ``journal`` records the requests the API accepted until their results are stored; a request
    found in it (left by an interrupted run) is collected instead of being submitted again.
    ``on_stored`` is told of each new result as soon as it is stored. ``shared``: a task the
    cache lacks is looked up there just before it is requested (another job may have made it
    since the run began; a result damaged or refused by the lock is not asked for again), and
    ``on_shared_extra`` given what was uploaded with a result taken from it (its thumbnail).
    ``on_settled`` is told of each task's record as soon as it is settled.
    """
    run = _Run(cache=cache, provider=provider, on_event=on_event or (lambda _event: None),
               known=known or {}, journal=journal, on_stored=on_stored, shared=shared,
               on_shared_extra=on_shared_extra)
    loop = asyncio.get_running_loop()
    tasks = [task for plan in plans for task in plan.tasks]
    for task in tasks:
        run.results[(task.pipeline, task.variant, task.step)] = loop.create_future()

    async def one(task: Task) -> None:
        # Only this task settles its future: the tasks awaiting it shield it. A Ctrl-C runs its
        # handler in the middle of whatever step is running and cancels the run from there, so
        # a step can be told to stop and still finish (set its record) in that same step; were
        # the future cancelled by a waiter meanwhile, setting it would raise InvalidStateError.
        future = run.future(task, task.step)
        try:
            record = await run.run(task)
        except BaseException:
            future.cancel()  # the tasks waiting on this one are cancelled in turn
            raise
        if not future.done():
            future.set_result(record)
            if on_settled is not None:
                on_settled(record)

    workers = [asyncio.ensure_future(one(task)) for task in tasks]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return [run.future(task, task.step).result() for task in tasks]
