"""Work queued for low-priority threads, which whoever waits for it helps do.

A run queues work on each result (its files, its thumbnail) for threads that must not slow the
run; at the run's end that work is needed, and the thread that waits for it takes the jobs not
started yet and does them itself, at its own priority, beside the low-priority threads (on a
busy machine those get little of the processor).

Results often come together (steps that take as long as each other), and those are the run's
busiest moments: downloading them, storing them, submitting the steps that follow. A niced
thread still takes its turns at the interpreter's lock, so the workers can be told to wait for
a lull: a while with no new job, or at most so long after the oldest one waiting. Whoever
waits for the work ends the waiting, and so does whoever knows that no such moment is coming.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable

from kontext_pipeline._support.threads import background_priority

__all__ = ["Backlog"]


class Backlog:
    """Jobs run in the order given, by ``workers`` low-priority threads (started with the
    first job), and by the thread in :meth:`drain`. A job's failure is its own affair: it is
    not raised.

    ``lull``: the workers start a job only once no job has been given for that many seconds,
    or once the oldest job waiting has waited ``patience`` seconds (as ``clock`` tells); from
    :meth:`hurry`, or the first :meth:`drain` or :meth:`close`, on, they wait no more. 0: no
    waiting."""

    def __init__(self, workers: int, name: str, *, lull: float = 0.0, patience: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(lull) and math.isfinite(patience) and 0 <= lull <= patience):
            raise ValueError("lull and patience are finite seconds, with 0 <= lull <= patience")
        self.workers = workers
        self.name = name
        self.lull = lull
        self.patience = patience
        self._clock = clock
        self._jobs: collections.deque[tuple[float, Callable[[], object]]] = collections.deque()
        self._changed = threading.Condition()
        self._running = 0
        self._closed = False
        self._hurried = False  # hurried, or a drain or close began: no more waiting
        self._last_given = 0.0
        self._threads: list[threading.Thread] = []

    def submit(self, job: Callable[[], object]) -> None:
        with self._changed:
            if self._closed:
                return
            self._last_given = self._clock()
            self._jobs.append((self._last_given, job))
            self._changed.notify()
            if not self._threads:
                self._threads = [threading.Thread(target=self._work, name=f"{self.name}-{n}",
                                                  daemon=True) for n in range(self.workers)]
                for thread in self._threads:
                    thread.start()

    @property
    def waits_for_lulls(self) -> bool:
        """Whether the workers still wait for a lull before a job."""
        with self._changed:
            return bool(self.lull) and not self._hurried

    def hurry(self) -> None:
        """From now on, the workers start each job without waiting for a lull."""
        with self._changed:
            self._hurried = True
            self._changed.notify_all()

    def drain(self) -> None:
        """Do the jobs not started yet on this thread too, until every job given so far is
        done."""
        self.hurry()
        while True:
            with self._changed:
                while not self._jobs and self._running:
                    self._changed.wait()
                if not self._jobs:
                    return
                job = self._take()
            self._do(job)

    def close(self) -> None:
        """Drop the jobs not started, and wait for the running ones, whoever runs them (a
        thread in :meth:`drain` too); the worker threads end."""
        with self._changed:
            self._closed = self._hurried = True
            self._jobs.clear()
            self._changed.notify_all()
            while self._running:
                self._changed.wait()
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        background_priority()
        while True:
            with self._changed:
                while True:
                    if not self._jobs:
                        if self._closed:
                            return
                        self._changed.wait()
                        continue
                    held = self._held()
                    if held <= 0:
                        break
                    self._changed.wait(min(held, threading.TIMEOUT_MAX))
                job = self._take()
            self._do(job)

    def _held(self) -> float:
        """How many seconds more the workers wait before the next job (with the condition
        held): until a lull, or until the oldest job has waited long enough."""
        if self._hurried or not self.lull or not self._jobs:
            return 0.0
        until = min(self._last_given + self.lull, self._jobs[0][0] + self.patience)
        return max(0.0, until - self._clock())

    def _take(self) -> Callable[[], object]:
        """The next job, counted as running (with the condition held)."""
        self._running += 1
        return self._jobs.popleft()[1]

    def _do(self, job: Callable[[], object]) -> None:
        try:
            with contextlib.suppress(Exception):
                job()
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()
