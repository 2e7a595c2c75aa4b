"""Which tasks of a plan already have their result, before anything runs: in the cache, or in
the recipe's lock and the files it lists.

A task's key needs its input images' hashes; when an input is an earlier step's output, that
hash is known only if the earlier step's result is: its cache entry's object, else the
``output_sha256`` the lock records for it when the lock's key is the task's. So the walk goes
step by step, and a step whose output is unknown leaves every step downstream of it unknown (a
miss: it will run).

With a lock, a task the cache lacks whose key is the lock's is taken from the files the lock
lists for it (``from_files`` checks them and refills the cache, see the runner). One whose files
are gone (an intermediate step whose image was never committed) still counts as done, "held" by
the lock, when it is not one of the recipe's outputs and every step that reads it has its result
too: nothing needs its bytes. Otherwise it runs again, before the steps that read it (its
``needed_by``), and they wait for its new output.

A shared cache (``shared``) is looked up last, for a task neither the cache nor the lock's files
hold: a run takes the result into the local cache, a plan only reads what it would take. With
one, the variants are walked on worker threads: each lookup is a request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._lock import Lock, LockedStep

__all__ = ["FromFiles", "FromShared", "Resolved", "Source", "cost_of_misses", "lock_reasons",
           "missing_lines", "resolve"]

Source = Literal["cache", "files", "lock", "shared"]
"""Where a task's result is: the cache; the lock's exported files (now refilled into the
cache); the lock's record alone (no bytes: nothing downstream needs them); the shared cache."""

FromShared = Callable[["Task", str, "str | None"], "CacheEntry | None"]
"""The shared cache's entry of a task's key (taken into the local cache, for a run), or None;
given the image the lock records for the key, if any, it takes no other (the lock is the
record: another image would change every step after it)."""

_SHARED_WORKERS = 16

FromFiles = Callable[[Task, LockedStep], "CacheEntry | str"]
"""Takes a task's result from the files its lock record lists: the cache entry made of one that
is intact, or why none is."""


@dataclass(frozen=True)
class Resolved:
    """A task's status before the run. ``key`` is None while an upstream step's output is
    unknown (``waits_on`` names it); ``problem`` says why a cache entry, or the lock's files,
    could not be used; ``locked`` is the lock's record of the task when its key is the task's;
    ``needed_by`` names the step that runs again and reads this one's output, which neither the
    cache nor an exported file holds; ``warning``: what the run tells of the result it takes
    (the cache and the lock disagree on it)."""

    task: Task
    key: str | None
    entry: CacheEntry | None = None
    waits_on: str | None = None
    problem: str | None = None
    locked: LockedStep | None = None
    source: Source | None = None
    needed_by: str | None = None
    warning: str | None = None

    def __post_init__(self) -> None:
        if self.source is None and self.entry is not None:
            object.__setattr__(self, "source", "cache")

    @property
    def hit(self) -> bool:
        """Whether the result is there (cache, exported files or lock): no request."""
        return self.source is not None

    @property
    def output_sha256(self) -> str | None:
        """The sha256 of the task's result, when it is there."""
        if self.entry is not None:
            return self.entry.object
        return self.locked.output_sha256 if self.source == "lock" and self.locked else None

    def why_missing(self) -> str:
        """Why this task has no result, in words."""
        if self.needed_by is not None:
            return (f"'{self.needed_by}' runs again and reads its output, which neither the "
                    "cache nor an exported file holds")
        if self.waits_on is not None:
            return f"its input '{self.waits_on}' is not cached"
        if self.problem is not None:
            return self.problem
        return f"no cached result for key {(self.key or '')[:12]}"


def resolve(plan: Plan, cache: Cache, lock: Lock | None = None, *,
            from_files: FromFiles | None = None,
            shared: FromShared | None = None) -> list[Resolved]:
    """The status of every task of ``plan``, in plan order. ``lock``: the recipe's lock (only
    for a plan of the provider it was made with; the pipeline's name is in no key, so a lock
    written before a rename still holds its results); ``from_files`` takes a locked task's
    result from its exported files (without it, a locked task the cache lacks is a miss,
    unless it is held by the lock).

    When the cache holds another image for a key than the lock (a run elsewhere made it
    again), the lock's is taken if its exported files hold it: the lock and the committed
    files are the record; else the cache's. Either way ``warning`` says so."""
    if lock is not None and lock.provider != plan.provider:
        lock = None
    outputs = set(plan.spec.outputs.values())

    local = _Sources(cache, lock, from_files, None)
    found = {variant.id: _variant(plan.tasks_of(variant.id), local, outputs)
             for variant in plan.variants}
    # the variants the cache and the lock do not hold whole, walked again with the shared
    # cache: on worker threads, since each lookup there is a request
    lacking = [variant for variant, items in found.items() if not all(r.hit for r in items)]
    if shared is not None and lacking:
        sources = _Sources(cache, lock, from_files, shared)
        with ThreadPoolExecutor(min(_SHARED_WORKERS, len(lacking)),
                                thread_name_prefix="resolve") as pool:
            found.update(zip(lacking, pool.map(
                lambda variant: _variant(plan.tasks_of(variant), sources, outputs,
                                         before=found[variant]), lacking), strict=True))
    return [item for variant in plan.variants for item in found[variant.id]]


@dataclass(frozen=True)
class _Sources:
    """Where a task's result may be, in the order looked at."""

    cache: Cache
    lock: Lock | None
    from_files: FromFiles | None
    shared: FromShared | None


def _variant(tasks: Sequence[Task], sources: _Sources, outputs: set[str],
             before: Sequence[Resolved] = ()) -> list[Resolved]:
    """The variant's tasks resolved; ``before``: a walk of them without the shared cache,
    whose hits (and what they warn of) stand."""
    known: dict[str, str] = {}  # step id -> sha256 of its output, where it is known
    found: dict[str, Resolved] = {}
    hits = {item.task.step: item for item in before if item.hit}
    for task in tasks:
        found[task.step] = item = hits.get(task.step) or _first(task, known, sources)
        digest = item.entry.object if item.entry is not None else (
            item.locked.output_sha256 if item.locked is not None else None)
        if digest is not None:
            known[task.step] = digest
    readers = {task.step: [t.step for t in tasks if any(i.is_step and i.name == task.step
                                                       for i in t.images)] for task in tasks}
    changed = True
    while changed:  # a step that runs again makes the steps that read it wait for its output
        changed = False
        for task in reversed(tasks):
            item = found[task.step]
            if item.locked is None or item.entry is not None or item.key is None:
                continue
            needing = [r for r in readers[task.step] if not found[r].hit]
            held = task.step not in outputs and not needing
            now = replace(item, source="lock" if held else None,
                          needed_by=needing[0] if needing and not held else None)
            if now != item:
                found[task.step] = now
                changed = True
            if not held:
                changed |= _wait(task.step, readers, found)
    return [found[task.step] for task in tasks]


def _first(task: Task, known: Mapping[str, str], sources: _Sources) -> Resolved:
    """The task's status from the cache, the lock and the shared cache, before the steps that
    read it count."""
    lock, from_files, shared = sources.lock, sources.from_files, sources.shared
    hashes: list[str] = []
    for image in task.images:
        digest = image.sha256 if not image.is_step else known.get(image.name)
        if digest is None:
            return Resolved(task, None, waits_on=image.name)
        hashes.append(digest)
    key = task.key(hashes)
    record = lock.steps.get((task.variant, task.step)) if lock is not None else None
    locked = record if record is not None and record.key == key else None
    lookup = sources.cache.lookup(key, task.params.output_format)
    if lookup.entry is not None and locked is not None and (
            lookup.entry.object != locked.output_sha256):
        return _disagreeing(task, key, lookup.entry, locked, from_files)
    if lookup.entry is not None:
        return Resolved(task, key, lookup.entry, locked=locked, source="cache")
    taken = from_files(task, locked) if from_files is not None and locked is not None else None
    if isinstance(taken, CacheEntry):
        return Resolved(task, key, taken, problem=lookup.problem, locked=locked, source="files")
    found = (shared(task, key, locked.output_sha256 if locked is not None else None)
             if shared is not None else None)
    if found is not None:
        return Resolved(task, key, found, problem=lookup.problem, locked=locked, source="shared")
    return Resolved(task, key, problem=taken or lookup.problem, locked=locked)


def _disagreeing(task: Task, key: str, cached: CacheEntry, locked: LockedStep,
                 from_files: FromFiles | None) -> Resolved:
    """The cache holds another image than the lock for ``key``: the lock's, if its files hold
    it (the cache is refilled with it), else the cache's."""
    where = f"{task.variant} / {task.step}"
    taken = from_files(task, locked) if from_files is not None else None
    if isinstance(taken, CacheEntry):
        return Resolved(task, key, taken, locked=locked, source="files", warning=(
            f"the cache holds another image than the lock for {where}; the lock's is used"))
    why = (taken or "its exported files were not looked at").removesuffix(
        "; the step runs again")
    return Resolved(task, key, cached, source="cache", warning=(
        f"the cache holds another image than the lock for {where}, and the lock's is not "
        f"to be had ({why}); the cache's is used"))


def _wait(step: str, readers: Mapping[str, list[str]], found: dict[str, Resolved]) -> bool:
    """The steps downstream of ``step`` (which runs again) wait for its new output: their keys
    are known only then. Returns whether any changed."""
    changed = False
    for reader in readers[step]:
        item = found[reader]
        if item.waits_on is None:
            found[reader] = Resolved(item.task, None, waits_on=step)
            changed = True
            _wait(reader, readers, found)
    return changed


def lock_reasons(resolved: Iterable[Resolved]) -> dict[str, str]:
    """Why each task the lock records runs all the same (task id -> why): its exported files
    do not hold its image, or a step after it needs that image. These say more than a
    comparison with the last run: the request is the one the lock records."""
    return {r.task.id: r.why_missing() for r in resolved
            if not r.hit and (r.needed_by is not None or (r.locked is not None and r.problem))}


def cost_of_misses(resolved: Iterable[Resolved]) -> float:
    """Credits the tasks that have no result will cost (estimated, for FLUX.2's)."""
    return round(sum(r.task.credits for r in resolved if not r.hit), 2)


def missing_lines(resolved: Sequence[Resolved]) -> list[str]:
    """``pipeline / variant / step: why`` for each task that has no result."""
    return [f"{r.task.pipeline} / {r.task.variant} / {r.task.step}: {r.why_missing()}"
            for r in resolved if not r.hit]
