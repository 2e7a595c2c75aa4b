"""Deadlines on awaits that never swallow a cancellation.

Until Python 3.12, ``asyncio.wait_for`` returns the result of what it waits for when that
finishes in the same moment as the waiting task is cancelled: the cancellation is lost, and a
run told to stop (Ctrl-C, SIGTERM) goes on polling a task that never ends. ``asyncio.timeout``
(3.11) keeps it; Python 3.10 has only ``wait_for``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["within"]

T = TypeVar("T")


async def within(seconds: float, action: Awaitable[T]) -> T:
    """``action``'s result, or :class:`TimeoutError` once ``seconds`` have passed."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(max(0.0, seconds)):
            return await action
    return await asyncio.wait_for(action, timeout=max(0.0, seconds))  # pragma: no cover
