"""What finished tasks teach a model's polls: latencies, progress precision and bias, the
shares of a latency each status shows at."""

from __future__ import annotations

import asyncio
import math

import pytest

from kontext_pipeline.providers._latencies import Finished, LatencyTracker, Reading


def test_latency_tracker_uses_the_median_and_wakes_waiters() -> None:
    tracker = LatencyTracker(window=3)
    assert tracker.learnt("m").median is None
    for seconds in (10.0, 1.0, 2.0, 3.0):
        tracker.record("m", seconds)
    assert tracker.learnt("m").median == 2.0
    assert tracker.learnt("other").median is None
    assert tracker.learnt("m").latencies == (1.0, 2.0, 3.0)

    async def scenario() -> tuple[bool, bool]:
        waiter = asyncio.ensure_future(tracker.wait("m", 5.0))
        await asyncio.sleep(0.01)
        tracker.record("m", 2.5)
        woken = await asyncio.wait_for(waiter, 1.0)
        timed_out = await tracker.wait("m", 0.01)
        return woken, timed_out

    assert asyncio.run(scenario()) == (True, False)


def test_a_finished_tasks_latency_lies_between_its_last_two_polls() -> None:
    assert Finished(ready=3.0, pending=2.0).latency == 2.5  # nothing better: the middle
    assert Finished(ready=3.0).latency == 1.5  # ready at its first poll: an early guess
    assert Finished(ready=3.0, pending=2.0, estimate=2.9).latency == 2.9
    assert Finished(ready=3.0, pending=2.0, estimate=1.5).latency == 2.0  # the nearer end
    assert Finished(ready=3.0, pending=2.0, estimate=3.5).latency == 3.0


def test_progress_resolution_is_learnt_from_the_decimals_seen() -> None:
    tracker = LatencyTracker()
    assert not tracker.learnt("m").reports_progress
    for value in (None, 0.0, 1.0, 0.5):  # none, the ends, then a one-decimal value
        tracker.observe("m", value)
    assert tracker.learnt("m").reports_progress
    assert tracker.learnt("m").resolution == pytest.approx(0.05)
    tracker.observe("m", 0.25)
    assert tracker.learnt("m").resolution == pytest.approx(0.005)


def test_bias_is_the_median_ratio_and_scattered_estimates_are_not_trusted() -> None:
    steady = LatencyTracker()
    for estimate in (2.0, 2.2, 2.4, 2.6, 2.8):  # each task ready 10 % after its estimate
        steady.record("m", Finished(ready=estimate * 1.1, pending=estimate * 1.05,
                                    estimate=estimate))
    learnt = steady.learnt("m")
    assert learnt.bias == pytest.approx(1.05)  # the nearer end: ready no earlier than that
    assert learnt.trust_progress
    scattered = LatencyTracker()
    for estimate, ready in ((2.0, 1.0), (2.0, 2.0), (2.0, 3.0), (2.0, 4.0)):
        scattered.record("m", Finished(ready=ready, pending=ready - 0.01, estimate=estimate))
    assert not scattered.learnt("m").trust_progress


def test_status_shares_bound_a_tasks_latency_once_enough_tasks_showed_it() -> None:
    tracker = LatencyTracker(window=5)
    for latency in (2.0, 2.5, 3.0):
        tracker.record("m", Finished(ready=latency, pending=latency, readings=(
            Reading(0.3 * latency, "Pending"), Reading(0.7 * latency, "Generating"),
            Reading(0.95 * latency, "Generating"))))
    assert tracker.learnt("m").status_shares == {}  # three tasks: not enough to go by
    tracker.record("m", Finished(ready=2.0, pending=2.0, readings=(Reading(0.6, "Pending"),
                                                                   Reading(1.4, "Generating"))))
    learnt = tracker.learnt("m")
    assert learnt.status_shares["Generating"] == pytest.approx((0.7, 0.95))
    assert learnt.status_shares["Pending"] == pytest.approx((0.3, 0.3))
    assert learnt.bounds(Reading(1.9, "Generating")) == pytest.approx((1.9 / 0.95, 1.9 / 0.7))
    assert learnt.bounds(Reading(0.6, "Reasoning")) == (0.0, math.inf)  # never seen
    for _ in range(5):  # the window moves on: what older tasks showed is forgotten
        tracker.record("m", Finished(ready=2.0, pending=2.0, readings=(Reading(1.8, "Pending"),)))
    assert tracker.learnt("m").status_shares == {"Pending": pytest.approx((0.9, 0.9))}
