"""Retry back-off, poll cadence and the active-task limiter, on a fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from kontext_pipeline.providers._policies import (
    ActiveTaskLimiter,
    LatencyTracker,
    PollPolicy,
    PollTimer,
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


def test_poll_timer_backs_off_until_latencies_are_known() -> None:
    policy = PollPolicy(first=0.5, factor=2.0, max_interval=3.0, jitter=0.0)
    timer = PollTimer(policy, random.Random(1), expected=None)
    seen = []
    for _ in range(5):
        due = timer.due(None)
        seen.append(due)
        timer.pending(due, None)
    assert seen == pytest.approx([0.5, 1.5, 3.5, 6.5, 9.5])


def test_poll_timer_first_poll_spreads_concurrent_tasks() -> None:
    policy = PollPolicy(first=0.5, jitter=0.3)
    rng = random.Random(3)
    firsts = [PollTimer(policy, rng, None).due(None) for _ in range(100)]
    assert 0.35 <= min(firsts) < 0.4
    assert 0.6 < max(firsts) <= 0.65


def test_poll_timer_polls_around_the_typical_latency() -> None:
    policy = PollPolicy(lead=0.95, spread=0.0, step=0.05, factor=2.0, min_interval=0.01)
    timer = PollTimer(policy, random.Random(1), expected=2.0)
    assert timer.due(2.0) == pytest.approx(1.9)
    timer.pending(1.9, 2.0)
    assert timer.due(2.0) == pytest.approx(2.0)  # 1.9 + 5% of 2.0
    timer.pending(2.0, 2.0)
    assert timer.due(2.0) == pytest.approx(2.2)  # the step doubles


def test_tasks_submitted_together_spread_their_first_poll_around_the_latency() -> None:
    policy = PollPolicy(lead=0.98, spread=0.04)
    rng = random.Random(5)
    firsts = [PollTimer(policy, rng, expected=2.0).due(2.0) for _ in range(200)]
    assert 1.88 <= min(firsts) < 1.89
    assert 2.03 < max(firsts) <= 2.04
    assert 0.2 < sum(1 for f in firsts if f >= 2.0) / len(firsts) < 0.4  # some look late


def test_news_of_a_finished_task_brings_the_next_poll_forward() -> None:
    policy = PollPolicy(first=0.5, factor=1.5, lead=1.0, spread=0.0, jitter=0.0,
                        min_interval=0.05)
    timer = PollTimer(policy, random.Random(1), expected=None)
    timer.pending(0.5, None)
    timer.pending(1.25, None)  # next backoff poll due at 2.375
    assert timer.due(None) == pytest.approx(2.375)
    assert timer.due(2.0) == pytest.approx(2.0)  # another task took 2.0 s: look then
    timer.pending(2.0, 2.0)
    assert timer.due(2.0) == pytest.approx(2.1)  # not again at once: a small step after


def test_news_from_a_task_of_the_same_age_means_poll_at_that_age() -> None:
    policy = PollPolicy(lead=1.0, spread=0.0, step=0.05, min_interval=0.02)
    timer = PollTimer(policy, random.Random(1), expected=2.0)
    timer.pending(1.99, 2.0)  # just too early: the next step would come at 2.09
    assert timer.due(2.0) == pytest.approx(2.09)
    timer.news(2.0)  # a task submitted with this one was ready at 2.0 s
    assert timer.due(2.0) == pytest.approx(2.01)  # at that age, or min_interval after the poll
    timer.pending(2.01, 2.0)  # still pending: the news is used up
    assert timer.due(2.0) == pytest.approx(2.01 + 2.0 * 0.05 * 1.5)  # steps grow


def test_news_is_ignored_by_a_task_that_polled_at_that_age_already() -> None:
    policy = PollPolicy(lead=1.0, spread=0.0, step=0.05, min_interval=0.02)
    timer = PollTimer(policy, random.Random(1), expected=2.0)
    timer.pending(3.0, 2.0)  # a slow one: pending at 3.0 s
    timer.news(2.1)  # another took 2.1 s: nothing new about this one
    assert timer.due(2.0) == pytest.approx(3.1)
    younger = PollTimer(policy, random.Random(1), expected=2.0)
    younger.pending(0.5, 2.0)
    younger.news(2.1)  # submitted later than the one that finished: poll at the same age
    assert younger.due(2.0) == pytest.approx(2.0)  # its own target comes first anyway
    younger.news(1.7)
    assert younger.due(2.0) == pytest.approx(1.7)


def test_progress_tells_the_latency_before_any_task_has_finished() -> None:
    policy = PollPolicy(first=0.5, lead=1.0, spread=0.0, jitter=0.0, min_progress=0.05)
    timer = PollTimer(policy, random.Random(1), expected=None)
    timer.pending(0.5, None, progress=0.01)  # too little to go by: back off
    assert timer.due(None) == pytest.approx(1.25)
    timer.pending(1.25, None, progress=0.25)  # a quarter done after 1.25 s: about 5 s in all
    assert timer.due(None) == pytest.approx(5.0)
    assert timer.due(4.0) == pytest.approx(4.0)  # finished tasks' latency wins over progress
    stuck = PollTimer(policy, random.Random(1), expected=None)
    stuck.pending(0.5, None, progress=1.0)  # "done" but still pending: no estimate from it
    assert stuck.due(None) == pytest.approx(1.25)


def test_retry_reschedules() -> None:
    timer = PollTimer(PollPolicy(), random.Random(1), expected=None)
    timer.retry(1.0, 0.25)
    assert timer.due(None) == 1.25


def test_a_failed_poll_waits_its_retry_delay_even_when_the_latency_says_ready() -> None:
    policy = PollPolicy(lead=1.0, step=0.05, min_interval=0.01)
    timer = PollTimer(policy, random.Random(1), expected=2.0)
    timer.retry(2.0, 1.5)  # e.g. a 503 with Retry-After: 1.5
    assert timer.due(2.0) == 3.5  # not at once, although 2.0 s is the typical latency
    assert timer.due(1.0) == 3.5  # nor when a faster task finishes meanwhile


def test_latency_tracker_uses_the_median_and_wakes_waiters() -> None:
    tracker = LatencyTracker(window=3)
    assert tracker.expected("m") is None
    for seconds in (10.0, 1.0, 2.0, 3.0):
        tracker.record("m", seconds)
    assert tracker.expected("m") == 2.0
    assert tracker.expected("other") is None

    async def scenario() -> tuple[bool, bool]:
        waiter = asyncio.ensure_future(tracker.wait("m", 5.0))
        await asyncio.sleep(0.01)
        tracker.record("m", 2.5)
        woken = await asyncio.wait_for(waiter, 1.0)
        timed_out = await tracker.wait("m", 0.01)
        return woken, timed_out

    assert asyncio.run(scenario()) == (True, False)


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
