"""Work queued for low-priority threads, which whoever waits for it helps do.

A run queues work on each result (its files, its thumbnail) for threads that must not slow the
run; at the run's end that work is needed, and the thread that waits for it takes the jobs not
started yet and does them itself, at its own priority, beside the low-priority threads (on a
busy machine those get little of the processor).
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable

from kontext_pipeline._support.threads import background_priority

__all__ = ["Backlog"]


class Backlog:
    """Jobs run in the order given, by ``workers`` low-priority threads (started with the
    first job), and by the thread in :meth:`drain`. A job's failure is its own affair: it is
    not raised."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers = workers
        self.name = name
        self._jobs: collections.deque[Callable[[], object]] = collections.deque()
        self._changed = threading.Condition()
        self._running = 0
        self._closed = False
        self._threads: list[threading.Thread] = []

    def submit(self, job: Callable[[], object]) -> None:
        with self._changed:
            if self._closed:
                return
            self._jobs.append(job)
            self._changed.notify()
            if not self._threads:
                self._threads = [threading.Thread(target=self._work, name=f"{self.name}-{n}",
                                                  daemon=True) for n in range(self.workers)]
                for thread in self._threads:
                    thread.start()

    def drain(self) -> None:
        """Do the jobs not started yet on this thread too, until every job given so far is
        done."""
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
            self._closed = True
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
                while not self._jobs and not self._closed:
                    self._changed.wait()
                if not self._jobs:
                    return
                job = self._take()
            self._do(job)

    def _take(self) -> Callable[[], object]:
        """The next job, counted as running (with the condition held)."""
        self._running += 1
        return self._jobs.popleft()

    def _do(self, job: Callable[[], object]) -> None:
        try:
            with contextlib.suppress(Exception):
                job()
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()
