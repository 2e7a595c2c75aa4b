"""Results the API pushes (webhooks), handed to the tasks that wait for them.

The receiver (:mod:`kontext_pipeline.webhooks`) delivers each verified notification here by
task id; the provider's polling loop takes it as the answer of a poll it did not have to make.
A notification may arrive before the submit's own answer has been read: it is kept, a bounded
number of them, until its task asks.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Inbox", "Webhook"]


class Inbox:
    """Notifications by task id, for the tasks waiting on them."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._early: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def deliver(self, task_id: str, payload: dict[str, Any]) -> None:
        """A notification for ``task_id`` came (its signature already verified)."""
        waiter = self._waiting.pop(task_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(payload)
            return
        self._early[task_id] = payload
        while len(self._early) > self.keep:
            self._early.popitem(last=False)

    async def wait(self, task_id: str, timeout: float) -> dict[str, Any] | None:
        """The notification of ``task_id``, if one comes within ``timeout`` seconds."""
        early = self._early.pop(task_id, None)
        if early is not None:
            return early
        waiter = self._waiting.setdefault(task_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            return None
        finally:
            if waiter.done():
                self._waiting.pop(task_id, None)

    def forget(self, task_id: str) -> None:
        """``task_id`` needs no notification any more (it finished by polling)."""
        waiter = self._waiting.pop(task_id, None)
        if waiter is not None:
            waiter.cancel()
        self._early.pop(task_id, None)


@dataclass(frozen=True)
class Webhook:
    """Where the API is to push results (``url``, public), the secret that signs them (one per
    run, random unless given) and the inbox the receiver delivers them to."""

    url: str
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    inbox: Inbox = field(default_factory=Inbox, repr=False, compare=False)
