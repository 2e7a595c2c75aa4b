"""Timing policies of the BFL client: retry back-off, polling cadence, and the account's
active-task limits (with a 429 lowering the effective limit for a while)."""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from kontext_pipeline._support.timeouts import within
from kontext_pipeline.recipe._models import ACCOUNT_LIMIT, MODELS

__all__ = [
    "DEFAULT_MODEL_LIMITS",
    "DEFAULT_TOTAL_LIMIT",
    "WEBHOOK_FALLBACK",
    "ActiveTaskLimiter",
    "LatencyTracker",
    "PollPolicy",
    "PollTimer",
    "RetryPolicy",
    "parse_retry_after",
]

DEFAULT_TOTAL_LIMIT = ACCOUNT_LIMIT
"""BFL allows 24 active tasks per account…"""

DEFAULT_MODEL_LIMITS: Mapping[str, int] = {
    model.name: model.concurrency for model in MODELS.values() if model.concurrency < ACCOUNT_LIMIT}
"""…and fewer of some models (6 of flux-kontext-max): the models table's limits."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with full jitter; ``Retry-After`` wins when the server sends it.

    Ten attempts wait about a minute in all before giving up (at most about a minute and a
    half): long enough to ride out a flaky minute of the service, short enough for CI to fail
    in reasonable time when it is really down.

    ``request_deadline`` bounds each request from sending it to the last byte of its answer
    (httpx's timeouts bound each read only, so a server sending a byte every 20 s would hold a
    request for ever); a submit has one more second per ``upload_rate`` bytes it sends.
    """

    attempts: int = 10
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_retry_after: float = 120.0
    request_deadline: float = 60.0
    upload_rate: float = 250_000.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 = the first retry)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class PollPolicy:
    """When to poll: around the model's typical latency once it is known, backing off before.

    Until a task of the model has finished, the first poll comes after ``first`` seconds (spread
    by ± ``jitter`` so that concurrent tasks sample different moments) and later ones back off by
    ``factor`` up to ``max_interval``. Once typical latencies are known, each task polls first
    at a fraction of the typical latency drawn from ``lead`` ± ``spread``, and then every
    ``step`` of it, growing by ``factor``. Tasks submitted together thus sample the moment they
    become ready at many points, and the first to find its result ready tells the others of
    its age (see :meth:`PollTimer.news`). Before any task of the model has finished, a task
    whose answer reports ``progress`` (at least ``min_progress``) takes ``elapsed / progress``
    as its typical latency. No task polls twice within ``min_interval``.
    """

    first: float = 0.5
    factor: float = 1.5
    max_interval: float = 4.0
    min_interval: float = 0.02
    lead: float = 0.98
    spread: float = 0.04
    step: float = 0.05
    jitter: float = 0.3
    min_progress: float = 0.05
    deadline: float = 600.0


WEBHOOK_FALLBACK = PollPolicy(first=30.0, factor=1.0, max_interval=30.0, jitter=0.3)
"""Polling while the API pushes results (webhooks): every 30 s or so, in case one never comes."""


class PollTimer:
    """The next poll of one task, as seconds since its submit was answered."""

    def __init__(self, policy: PollPolicy, rng: random.Random, expected: float | None) -> None:
        self.policy = policy
        self.last_poll = -math.inf
        self._backoff = policy.first * rng.uniform(1 - policy.jitter, 1 + policy.jitter)
        self._lead = rng.uniform(policy.lead - policy.spread, policy.lead + policy.spread)
        self._near = 0
        self._not_before = 0.0  # after a failed poll: not again before its retry delay
        self._news = math.inf  # the age at which a task like this one was found ready
        self._eta: float | None = None  # this task's latency, as its progress suggests
        self.scheduled = self._backoff if expected is None else expected * self._lead

    def due(self, expected: float | None) -> float:
        """When the next poll is due, given the typical latency known now: a task that has not
        polled since reaching its share of the typical latency polls then; one that has polls
        again a small step later, whatever back-off it was scheduled with before the latency
        was known. News of a task of the same age brings the poll forward to that age.
        """
        policy = self.policy
        expected = self._eta if expected is None else expected
        if expected is None:
            due = self.scheduled
        else:
            target = expected * self._lead
            if self.last_poll < target - policy.min_interval:
                due = min(self.scheduled, target)
            else:
                step = expected * policy.step * policy.factor ** self._near
                due = min(self.scheduled, self.last_poll + max(policy.min_interval, step))
        due = min(due, max(self._news, self.last_poll + policy.min_interval))
        return max(self._not_before, due)

    def news(self, latency: float) -> None:
        """Another task of the model was found ready ``latency`` seconds after its submit. Unless
        this one has polled at that age or later already, it is probably ready at that age too:
        poll then (at once, if it is older).
        """
        if self.last_poll < latency:
            self._news = min(self._news, latency)

    def pending(self, elapsed: float, expected: float | None,
                progress: float | None = None) -> None:
        """The poll at ``elapsed`` found the task still pending, with ``progress`` (the share
        done, from 0 to 1) when the answer reported it."""
        policy = self.policy
        self.last_poll = elapsed
        if elapsed >= self._news:
            self._news = math.inf
        if progress is not None and policy.min_progress <= progress < 1:
            self._eta = elapsed / progress
        expected = self._eta if expected is None else expected
        if expected is None:
            self._backoff = min(policy.max_interval, self._backoff * policy.factor)
            delay = self._backoff
        elif elapsed >= expected * self._lead - policy.min_interval:
            delay = expected * policy.step * policy.factor ** self._near
            self._near += 1
        else:  # not there yet: look again when it should be
            delay = expected * self._lead - elapsed
        self.scheduled = elapsed + min(policy.max_interval, max(policy.min_interval, delay))

    def retry(self, elapsed: float, delay: float) -> None:
        """The poll at ``elapsed`` failed; try again after ``delay``, not sooner."""
        self.scheduled = self._not_before = elapsed + delay


class LatencyTracker:
    """Recent task latencies per model (the time until a poll saw the task ready), and a
    signal for the tasks still waiting whenever one finishes."""

    def __init__(self, window: int = 32) -> None:
        self.window = window
        self._samples: dict[str, deque[float]] = {}
        self._news: dict[str, asyncio.Event] = {}

    def record(self, model: str, seconds: float) -> None:
        self._samples.setdefault(model, deque(maxlen=self.window)).append(seconds)
        news = self._news.pop(model, None)
        if news is not None:
            news.set()

    def expected(self, model: str) -> float | None:
        """The median of the recent latencies."""
        samples = self._samples.get(model)
        return statistics.median(samples) if samples else None

    def latest(self, model: str) -> float | None:
        """The latency of the task of ``model`` that finished last."""
        samples = self._samples.get(model)
        return samples[-1] if samples else None

    async def wait(self, model: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if a task of ``model`` finished meanwhile."""
        news = self._news.setdefault(model, asyncio.Event())
        try:
            await within(timeout, news.wait())
        except asyncio.TimeoutError:
            return False
        return True


class ActiveTaskLimiter:
    """Slots for active tasks: at most ``total`` at once and ``per_model[m]`` of model ``m``.

    A slot is held from submit until the task reaches a terminal status. Waiters are served
    first come, first served (one whose model is at its limit lets the next one pass), and a
    freed slot goes straight to the next waiter: nothing else wakes up. ``throttle()`` (on a
    429) lowers the effective total below the number active; it recovers by one slot per
    ``recovery`` seconds without another 429.
    """

    def __init__(
        self,
        total: int = DEFAULT_TOTAL_LIMIT,
        per_model: Mapping[str, int] = DEFAULT_MODEL_LIMITS,
        *,
        recovery: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1:
            raise ValueError("the active-task limit must be at least 1")
        self.total = total
        self.per_model = dict(per_model)
        self.recovery = recovery
        self._clock = clock
        self._limit = float(total)
        self._changed_at = clock()
        self._active = 0
        self._by_model: dict[str, int] = {}
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.peak = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def limit(self) -> int:
        """The effective total limit now."""
        self._recover()
        return int(self._limit)

    def _recover(self) -> None:
        if self._limit >= self.total:
            return
        elapsed = self._clock() - self._changed_at
        steps = int(elapsed / self.recovery)
        if steps:
            self._limit = min(float(self.total), self._limit + steps)
            self._changed_at += steps * self.recovery

    def throttle(self) -> None:
        """The server said 429: allow one task fewer than are active now, for a while."""
        self._limit = max(1.0, min(self._limit, self._active - 1.0))
        self._changed_at = self._clock()

    def _model_free(self, model: str) -> bool:
        return self._by_model.get(model, 0) < self.per_model.get(model, self.total)

    def _grant(self) -> None:
        """Hand free slots to waiters, in order."""
        for entry in list(self._waiters):
            if self._active >= self.limit:
                break
            model, future = entry
            if future.done():
                self._waiters.remove(entry)
            elif self._model_free(model):
                self._waiters.remove(entry)
                self._take(model)
                future.set_result(None)
        if self._waiters and self._limit < self.total and self._timer is None:
            delay = max(0.01, self._changed_at + self.recovery - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._recovered)

    def _recovered(self) -> None:
        self._timer = None
        self._grant()

    def _take(self, model: str) -> None:
        self._active += 1
        self._by_model[model] = self._by_model.get(model, 0) + 1
        self.peak = max(self.peak, self._active)

    def _release(self, model: str) -> None:
        self._active -= 1
        self._by_model[model] -= 1
        self._grant()

    @asynccontextmanager
    async def slot(self, model: str) -> AsyncIterator[None]:
        """Hold one active-task slot of ``model`` for the duration of the block."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((model, future))
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(model)  # granted as the wait was cancelled: hand it on
            else:
                future.cancel()
                self._grant()
            raise
        try:
            yield
        finally:
            self._release(model)
