"""Which tasks of a plan the cache already holds, before anything runs.

A task's key needs its input images' hashes; when an input is an earlier step's output, that
hash is known only if the earlier step is cached. So the walk goes step by step: a hit gives
the next step its input hash, a miss leaves every step downstream of it unknown (and counted as
a miss: it will run).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kontext_pipeline.plan._plan import Plan, Task
from kontext_pipeline.store._cache import Cache, CacheEntry

__all__ = ["Resolved", "cost_of_misses", "missing_lines", "resolve"]


@dataclass(frozen=True)
class Resolved:
    """A task's cache status. ``key`` is None while an upstream step is not cached
    (``waits_on`` names it); ``problem`` says why a present entry could not be used."""

    task: Task
    key: str | None
    entry: CacheEntry | None = None
    waits_on: str | None = None
    problem: str | None = None

    @property
    def hit(self) -> bool:
        return self.entry is not None

    def why_missing(self) -> str:
        """Why this task is not in the cache, in words."""
        if self.waits_on is not None:
            return f"its input '{self.waits_on}' is not cached"
        if self.problem is not None:
            return self.problem
        return f"no cached result for key {(self.key or '')[:12]}"


def resolve(plan: Plan, cache: Cache) -> list[Resolved]:
    """The cache status of every task of ``plan``, in plan order."""
    resolved: list[Resolved] = []
    for variant in plan.variants:
        outputs: dict[str, str] = {}  # step id -> sha256 of its cached output
        for task in plan.tasks_of(variant.id):
            hashes: list[str] = []
            missing = None
            for image in task.images:
                digest = image.sha256 if not image.is_step else outputs.get(image.name)
                if digest is None:
                    missing = image.name
                    break
                hashes.append(digest)
            if missing is not None:
                resolved.append(Resolved(task, None, waits_on=missing))
                continue
            key = task.key(hashes)
            lookup = cache.lookup(key, task.params.output_format)
            if lookup.entry is not None:
                outputs[task.step] = lookup.entry.object
            resolved.append(Resolved(task, key, lookup.entry, problem=lookup.problem))
    return resolved


def cost_of_misses(resolved: Iterable[Resolved]) -> int:
    """Credits the tasks that are not cached will cost."""
    return sum(r.task.credits for r in resolved if not r.hit)


def missing_lines(resolved: Sequence[Resolved]) -> list[str]:
    """``pipeline / variant / step: why`` for each task that is not cached."""
    return [f"{r.task.pipeline} / {r.task.variant} / {r.task.step}: {r.why_missing()}"
            for r in resolved if not r.hit]
