"""Results the API pushes (webhooks), handed to the tasks that wait for them.

The receiver (:mod:`kontext_pipeline.runner._webhooks`) puts each verified notification here by task
id: a status whose body is proven (HMAC-signed), which the provider's polling loop takes as the
answer of a poll it did not have to make, or a hint that the task has probably ended (the
notification proved its sender, not its body), on which the loop polls at once. A notification
may arrive before the submit's own answer has been read: it is kept, a bounded number of them,
until its task asks.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from kontext_pipeline._support.timeouts import within

__all__ = ["Inbox", "Pushed", "Webhook"]


@dataclass(frozen=True)
class Pushed:
    """What came for a task: its status (``body``, as a poll would answer), or None: poll now."""

    body: dict[str, Any] | None


class Inbox:
    """Notifications by task id, for the tasks waiting on them."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._waiting: dict[str, asyncio.Future[Pushed]] = {}
        self._early: OrderedDict[str, Pushed] = OrderedDict()

    def deliver(self, task_id: str, payload: dict[str, Any]) -> None:
        """The status of ``task_id`` came, its body proven (HMAC-signed with the secret); one
        that names no status is taken as a hint."""
        if isinstance(payload.get("status"), str):
            self._put(task_id, Pushed(payload))
        else:
            self.hint(task_id)

    def hint(self, task_id: str) -> None:
        """``task_id`` has probably ended (a notification from a sender that knows the secret,
        whose body is not proven): its task is to poll now."""
        early = self._early.get(task_id)
        if early is None or early.body is None:  # a proven status is worth more than a hint
            self._put(task_id, Pushed(None))

    def _put(self, task_id: str, pushed: Pushed) -> None:
        waiter = self._waiting.pop(task_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(pushed)
            return
        self._early[task_id] = pushed
        while len(self._early) > self.keep:
            self._early.popitem(last=False)

    async def wait(self, task_id: str, timeout: float) -> Pushed | None:
        """What comes for ``task_id`` within ``timeout`` seconds, if anything."""
        early = self._early.pop(task_id, None)
        if early is not None:
            return early
        waiter = self._waiting.setdefault(task_id, asyncio.get_running_loop().create_future())
        try:
            return await within(timeout, asyncio.shield(waiter))
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
