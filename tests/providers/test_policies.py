"""Retry back-off and the active-task limiter, on a fake clock (poll cadence:
test_polling.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from kontext_pipeline.providers._policies import (
    ActiveTaskLimiter,
    RetryPolicy,
    parse_retry_after,
)


def test_retry_delays_double_with_jitter_and_are_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= ceiling / 2
        assert max(delays) <= ceiling
        assert len(set(delays)) > 100  # jittered


def test_retry_after_wins_but_is_bounded() -> None:
    policy = RetryPolicy(max_retry_after=60.0)
    assert policy.delay(1, random.Random(), retry_after=7.0) == 7.0
    assert policy.delay(1, random.Random(), retry_after=3600.0) == 60.0


def test_parse_retry_after() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=1445412480.0) == 5.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_caps_total_and_per_model() -> None:
    async def scenario() -> tuple[int, int]:
        limiter = ActiveTaskLimiter(3, {"max": 1})
        active_max = 0

        async def task(model: str) -> None:
            nonlocal active_max
            async with limiter.slot(model):
                active_max = max(active_max, limiter._by_model.get("max", 0))
                await asyncio.sleep(0.01)

        await asyncio.gather(*(task("max") for _ in range(4)), *(task("pro") for _ in range(6)))
        return limiter.peak, active_max

    peak, max_active = asyncio.run(scenario())
    assert peak == 3
    assert max_active == 1


def test_throttle_lowers_then_recovers_one_slot_per_period() -> None:
    clock = FakeClock()

    async def scenario() -> list[int]:
        limiter = ActiveTaskLimiter(24, recovery=5.0, clock=clock)
        seen = []
        async with limiter.slot("pro"), limiter.slot("pro"), limiter.slot("pro"):
            limiter.throttle()
            seen.append(limiter.limit)
        clock.now = 5.0
        seen.append(limiter.limit)
        clock.now = 12.0
        seen.append(limiter.limit)
        clock.now = 1000.0
        seen.append(limiter.limit)
        return seen

    assert asyncio.run(scenario()) == [2, 3, 4, 24]


def test_throttled_waiters_resume_when_the_cool_down_ends() -> None:
    async def scenario() -> int:
        limiter = ActiveTaskLimiter(4, recovery=0.05)
        async with limiter.slot("pro"):
            limiter.throttle()  # limit 1, and one is active: the next must wait
            waiter = asyncio.ensure_future(_enter(limiter))
            await asyncio.sleep(0.01)
            assert not waiter.done()
        return await asyncio.wait_for(waiter, timeout=2.0)

    assert asyncio.run(scenario()) == 1


async def _enter(limiter: ActiveTaskLimiter) -> int:
    async with limiter.slot("pro"):
        return limiter.active


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ActiveTaskLimiter(0)


def test_slots_are_granted_in_order_and_a_full_model_lets_others_pass() -> None:
    async def scenario() -> list[str]:
        limiter = ActiveTaskLimiter(2, {"max": 1})
        order: list[str] = []
        release = asyncio.Event()

        async def task(name: str, model: str) -> None:
            async with limiter.slot(model):
                order.append(name)
                await release.wait()

        workers = [asyncio.ensure_future(task(n, m)) for n, m in
                   [("max-1", "max"), ("max-2", "max"), ("pro-1", "pro"), ("pro-2", "pro")]]
        await asyncio.sleep(0.01)
        started = list(order)
        release.set()
        await asyncio.gather(*workers)
        return [*started, "|", *order[len(started):]]

    assert asyncio.run(scenario()) == ["max-1", "pro-1", "|", "max-2", "pro-2"]


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> int:
        limiter = ActiveTaskLimiter(1)
        async with limiter.slot("pro"):
            waiter = asyncio.ensure_future(_enter(limiter))
            await asyncio.sleep(0.01)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
        async with limiter.slot("pro"):
            return limiter.active

    assert asyncio.run(scenario()) == 1
