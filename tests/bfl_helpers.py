"""Helpers for tests that talk to the bundled server: a fast provider, a recorded sleep."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine
from typing import Any, TypeVar

from PIL import Image

from kontext_pipeline.providers._base import EditRequest, ProviderEvent
from kontext_pipeline.providers._policies import ActiveTaskLimiter, PollPolicy, RetryPolicy
from kontext_pipeline.providers.bfl import BflProvider, http_client
from kontext_pipeline.server._run import BackgroundServer

KEY = "bfl_test_key_do_not_print_0123456789"
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class RecordedSleep:
    """Records each requested delay; really sleeps a capped, short time."""

    def __init__(self, cap: float = 0.02) -> None:
        self.delays: list[float] = []
        self.cap = cap

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(min(seconds, self.cap))


def provider_for(server: BackgroundServer, *, key: str = KEY, total: int = 24,
                 sleep: RecordedSleep | None = None, deadline: float = 30.0,
                 attempts: int = 6, recovery: float = 0.05) -> BflProvider:
    """A provider for ``server`` with quick policies (tests count, they do not time)."""
    return BflProvider(
        client=http_client(timeout=10.0), api_key=key, api_base=server.url,
        limiter=ActiveTaskLimiter(total, recovery=recovery),
        retry=RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=2.0),
        polling=PollPolicy(first=0.02, max_interval=0.05, deadline=deadline),
        sleep=sleep or RecordedSleep(cap=0.05))


def png(color: tuple[int, int, int] = (200, 30, 40), size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


async def generate(provider: BflProvider, request: EditRequest,
                   events: list[ProviderEvent] | None = None) -> Any:
    try:
        return await provider.generate(request, events.append if events is not None else None)
    finally:
        await provider.aclose()
