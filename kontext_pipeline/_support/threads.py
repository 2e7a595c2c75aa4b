"""Threads for work that must not slow the work that matters (drawing, thumbnails)."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["QuietWorker", "background_pool", "background_priority"]


def background_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: per-thread niceness; elsewhere
    nothing)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def background_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads at a low priority."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name,
                              initializer=background_priority)


class QuietWorker:
    """One low-priority thread that runs the jobs given to it once they stop coming for
    ``quiet`` seconds: results arrive in bursts (a wave of tasks finishing), and the work they
    cause waits for the lull that follows, when the run is only waiting on the API.

    ``close()`` drops the jobs not started yet (their callers make up for them) and waits for
    the one running, if any.
    """

    def __init__(self, name: str, quiet: float = 0.05) -> None:
        self.quiet = quiet
        self._jobs: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> None:
        if not self._closed.is_set():
            self._jobs.put(job)

    def close(self) -> None:
        self._closed.set()
        self._jobs.put(None)
        self._thread.join()

    def _work(self) -> None:
        background_priority()
        pending: list[Callable[[], object]] = []
        while not self._closed.is_set():
            try:
                job = self._jobs.get(timeout=self.quiet if pending else None)
            except queue.Empty:  # a lull: run what came
                while pending and not self._closed.is_set():
                    with contextlib.suppress(Exception):  # a job's failure is its own affair
                        pending.pop(0)()
                continue
            if job is not None:
                pending.append(job)
