"""Timing policies of the BFL client: retry back-off, polling cadence (``_polling``, from what
``_latencies`` learns), and the account's active-task limits (with a 429 lowering the effective
limit for a while)."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from kontext_pipeline.providers._latencies import LatencyTracker
from kontext_pipeline.providers._polling import WEBHOOK_FALLBACK, PollPolicy, PollTimer
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
