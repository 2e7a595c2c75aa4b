"""Threads for work that must not slow the work that matters (drawing, thumbnails)."""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["background_pool", "background_priority"]


def background_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: per-thread niceness; elsewhere
    nothing)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def background_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads at a low priority."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name,
                              initializer=background_priority)
