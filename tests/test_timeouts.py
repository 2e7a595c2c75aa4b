"""A deadline on an await never swallows the cancellation of the task that waits."""

from __future__ import annotations

import asyncio

import pytest

from kontext_pipeline._support.timeouts import within


def test_the_result_comes_within_the_deadline() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert asyncio.run(within(5, quick())) == 7


def test_past_the_deadline_it_raises_timeout_error() -> None:
    async def never() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        asyncio.run(within(0.01, never()))


def test_a_cancellation_that_meets_the_result_is_kept() -> None:
    """The waiting task is cancelled in the very moment its awaitable finishes (a Ctrl-C while
    a poll's answer arrives): ``asyncio.wait_for`` before Python 3.12 returns the result and
    loses the cancellation, and a stopped run went on polling for ever."""

    async def scenario() -> bool:
        inner: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(within(60, inner))
        await asyncio.sleep(0)  # the task now waits on ``inner``
        inner.set_result(1)
        waiting.cancel()
        try:
            await waiting
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(scenario())
