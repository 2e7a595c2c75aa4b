"""When to poll a task: where its result is likely to be ready.

Three sources, best first:

* the task's own ``progress``: a task ``p`` done after ``e`` seconds is ready after about
  ``e / p`` (between ``e / (p + r)`` and ``e / (p - r)`` when the progress is rounded to
  ``r``, and corrected by how far such estimates were off for the model's finished tasks); a
  task polls once early to read it, once more near the estimate if that was not sharp, then
  at the estimate's end (if still in flight there, its answer sharpens the estimate again);
* the latencies the model's finished tasks took: without progress, polls are placed at
  quantiles of the latencies still possible (longer than the task's last poll, and in the
  range its status allows, from the shares of their latency at which finished tasks showed
  it), so that a task polls about ``budget`` times;
* before any task of the model has finished: a first poll after ``first`` seconds (as BFL's own
  samples wait), then backing off.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from kontext_pipeline.providers._latencies import Finished, Learnt, Reading

__all__ = ["WEBHOOK_FALLBACK", "PollPolicy", "PollTimer"]


@dataclass(frozen=True)
class PollPolicy:
    """How polls are spaced (seconds, or shares of a latency).

    ``first`` (spread by ± ``jitter`` of it, so that tasks submitted together sample different
    moments), then growing by ``factor`` up to ``max_interval``: before anything is known.
    ``probe``: the share of the shortest latency learnt at which a task of a model that reports
    progress polls first (unless the latencies learnt lie within ``sharp`` of each other: then
    a first poll where they lie is as good). An estimate wider than ``sharp`` of itself is
    sharpened by a poll at ``refine`` of its start. ``budget``: the polls a task aims at when
    only latencies are known.
    ``step``: after a poll at or past the estimate that found the task in flight, the next
    comes this share of the estimate later, growing by ``factor``. No task polls twice within
    ``min_interval``, nor waits longer between polls than ``max_interval`` or ``reach`` of its
    age, whichever is longer; progress under ``min_progress`` says too little to estimate from.
    """

    first: float = 0.5
    factor: float = 1.5
    max_interval: float = 4.0
    min_interval: float = 0.02
    jitter: float = 0.3
    probe: float = 0.6
    sharp: float = 0.015
    refine: float = 0.92
    budget: int = 3
    step: float = 0.02
    min_progress: float = 0.05
    reach: float = 0.25
    deadline: float = 600.0

    def __post_init__(self) -> None:
        if not (self.min_interval > 0 and self.max_interval > 0 and 0 < self.min_progress < 1
                and self.first > 0 and self.factor >= 1 and self.budget >= 1):
            raise ValueError(f"inconsistent poll policy: {self}")


WEBHOOK_FALLBACK = PollPolicy(first=30.0, factor=1.0, max_interval=30.0, jitter=0.3)
"""Polling while the API pushes results (webhooks): every 30 s or so, in case one never comes."""


class PollTimer:
    """The next poll of one task, as seconds since its submit was answered."""

    def __init__(self, policy: PollPolicy, rng: random.Random) -> None:
        self.policy = policy
        self.last_poll = -math.inf
        self.polls = 0
        self._backoff = policy.first * rng.uniform(1 - policy.jitter, 1 + policy.jitter)
        self._scheduled = self._backoff  # while nothing is known of the model
        self._not_before = 0.0  # after a failed poll: not again before its retry delay
        self._estimate: tuple[float, float] | None = None  # its latency, as progress says
        self._aimed_at: float | None = None  # the estimate of the first poll at its end
        self._misses = 0  # polls at or past the estimate that found it in flight
        self._late = 0  # polls past every latency learnt
        self._last: Reading | None = None
        self._seen: dict[str, tuple[Reading, Reading]] = {}  # first and last answer per status

    def due(self, learnt: Learnt) -> float:
        """When the next poll is due, given what is known of the model now."""
        policy = self.policy
        if self._estimate is not None and learnt.trust_progress:
            low, high = self._estimate
            due = self._aimed(low * learnt.bias, high * learnt.bias)
        elif learnt.latencies:
            due = self._placed(learnt)
        else:
            due = self._scheduled
        if self.polls:  # however far an estimate reaches, look again before long
            due = min(due, self.last_poll + self._longest())
        return max(self._not_before, due, self.last_poll + policy.min_interval)

    def _longest(self) -> float:
        """The longest wait between two polls now."""
        return max(self.policy.max_interval, self.policy.reach * self.last_poll)

    def _aimed(self, low: float, high: float) -> float:
        """At the end of the estimate (after a poll to sharpen it first, if it is wide); once
        polled there in vain, small growing steps after it."""
        policy = self.policy
        refine = policy.refine * low
        if high - low > policy.sharp * high and self.last_poll < refine - policy.min_interval:
            return refine
        if self.last_poll < high - policy.min_interval:
            return high
        step = high * policy.step * policy.factor ** self._misses
        return self.last_poll + max(policy.min_interval, step)

    def _placed(self, learnt: Learnt) -> float:
        """Where the latencies learnt say the result is likely, given the task's age and
        status: a probe early on when the model reports progress, else quantiles."""
        policy = self.policy
        latencies = learnt.latencies
        tight = len(latencies) >= 4 and latencies[-1] - latencies[0] <= policy.sharp * \
            latencies[len(latencies) // 2]
        if self.polls == 0 and learnt.reports_progress and learnt.trust_progress and not tight:
            return policy.probe * latencies[0]
        low, high = learnt.bounds(self._last) if self._last is not None else (0.0, math.inf)
        after = self.last_poll + policy.min_interval
        possible = [s for s in latencies if s > after and low <= s <= high] or [
            s for s in latencies if s > after]
        if possible:
            share = max(1, policy.budget - self.polls)
            return possible[math.ceil(len(possible) / share) - 1]
        # past every latency learnt: steps as fine as the latencies' spread, growing
        spread = (latencies[-1] - latencies[0]) / policy.budget
        step = max(policy.min_interval, policy.step * (learnt.median or policy.first), spread)
        return self.last_poll + step * policy.factor ** self._late

    def pending(self, reading: Reading, learnt: Learnt) -> None:
        """The poll ``reading`` tells of found the task still in flight."""
        policy = self.policy
        elapsed = reading.elapsed
        if self._estimate is not None and elapsed >= self._estimate[1] * learnt.bias - \
                policy.min_interval:
            self._misses += 1
            if self._aimed_at is None:
                self._aimed_at = sum(self._estimate) / 2
        if learnt.latencies and elapsed >= learnt.latencies[-1]:
            self._late += 1
        self.last_poll = elapsed
        self.polls += 1
        first, _ = self._seen.get(reading.status, (reading, reading))
        self._seen[reading.status] = first, reading
        rounding = learnt.resolution
        progress = reading.progress
        before = self._last.progress if self._last is not None else None
        moved = before is None or progress is None or progress > before + rounding
        if progress is not None and policy.min_progress <= progress < 1 and moved:
            self._estimate = (elapsed / min(1.0, progress + rounding),
                              elapsed / max(policy.min_progress / 2, progress - rounding))
        self._last = reading
        self._backoff = min(self._longest(), self._backoff * policy.factor)
        self._scheduled = elapsed + self._backoff

    def retry(self, elapsed: float, delay: float) -> None:
        """A poll failed at ``elapsed`` (when its answer, or its failure, came); try again
        after ``delay``, not sooner."""
        self._scheduled = self._not_before = elapsed + delay

    def finished(self, elapsed: float) -> Finished:
        """What this task teaches, seen ready by the poll at ``elapsed``."""
        readings = tuple(r for pair in self._seen.values() for r in dict.fromkeys(pair))
        estimate = self._aimed_at
        if estimate is None and self._estimate is not None:
            estimate = sum(self._estimate) / 2
        return Finished(ready=elapsed, pending=max(0.0, self.last_poll), readings=readings,
                        estimate=estimate)
