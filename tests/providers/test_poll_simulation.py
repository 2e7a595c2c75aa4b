"""Poll placement, simulated: tasks whose latencies and answers are made up (a seeded draw),
polled as the provider polls them, on a clock of their own (no time passes). It measures what
the bundled-server tests cannot measure without timing: how late each result is found, and
what that costs in polls, when latencies vary, when progress is missing, stuck or biased, and
when the latencies change under a run."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kontext_pipeline.providers._latencies import LatencyTracker, Reading
from kontext_pipeline.providers._polling import PollPolicy, PollTimer

Answer = Callable[[float, float], tuple[str, float | None]]
"""(age, latency) -> what an in-flight poll answers: its status and its progress."""


@dataclass(frozen=True)
class Outcome:
    polls: float  # per task, on average
    late: float  # how late a result is found, as a share of its latency, on average
    latest: float  # the most, as a share


def simulate(latencies: Sequence[float], answer: Answer, *, tracker: LatencyTracker | None = None,
             parallel: int = 4, policy: PollPolicy | None = None) -> Outcome:
    """Run tasks ``parallel`` at a time, each polled when its timer says until it is ready."""
    policy = policy or PollPolicy()
    tracker = tracker or LatencyTracker()
    rng = random.Random(7)
    waiting = list(latencies)
    active: list[tuple[float, float, PollTimer]] = []  # (start, latency, timer)
    now, polls, lateness = 0.0, 0, []
    while waiting or active:
        while waiting and len(active) < parallel:
            active.append((now, waiting.pop(0), PollTimer(policy, rng)))
        learnt = tracker.learnt("m")
        start, latency, timer = min(active, key=lambda a: a[0] + a[2].due(learnt))
        age = timer.due(learnt)
        assert age <= policy.deadline, "a task was given up before its deadline"
        now = max(now, start + age)
        polls += 1
        if age >= latency:
            tracker.record("m", timer.finished(age))
            lateness.append((age - latency) / latency)
            active.remove((start, latency, timer))
            continue
        status, progress = answer(age, latency)
        tracker.observe("m", progress)
        timer.pending(Reading(age, status, progress), tracker.learnt("m"))
    return Outcome(polls / len(latencies), sum(lateness) / len(lateness), max(lateness))


def spread(count: int, low: float, high: float, seed: int) -> list[float]:
    draw = random.Random(seed)
    return [draw.uniform(low, high) for _ in range(count)]


def rounded(age: float, latency: float) -> tuple[str, float | None]:
    return "Pending", round(age / latency, 2)  # as the bundled server reports it


def silent(_age: float, _latency: float) -> tuple[str, float | None]:
    return "Pending", None


def test_progress_finds_varying_results_within_a_few_percent_in_under_four_polls() -> None:
    outcome = simulate(spread(96, 2.0, 3.0, seed=1), rounded)
    assert outcome.polls <= 4.0
    assert outcome.late <= 0.02
    assert outcome.latest <= 0.10


def test_without_progress_the_learnt_latencies_place_about_three_polls() -> None:
    outcome = simulate(spread(96, 2.0, 3.0, seed=2), silent)
    assert outcome.polls <= 3.0
    assert outcome.late <= 0.2


def test_latencies_that_fall_are_noticed_within_a_window() -> None:
    tracker = LatencyTracker(window=32)
    simulate(spread(40, 20.0, 21.0, seed=3), silent, tracker=tracker)  # a slow spell
    simulate(spread(48, 2.0, 3.0, seed=4), silent, tracker=tracker)  # the window moves on
    after = simulate(spread(48, 2.0, 3.0, seed=5), silent, tracker=tracker)
    assert after.late <= 0.3  # not polled at the slow spell's latencies any more
    assert after.polls <= 3.0


def test_progress_stuck_short_of_done_costs_few_polls() -> None:
    def stuck(age: float, latency: float) -> tuple[str, float | None]:
        return "Pending", min(0.99, round(age / (0.9 * latency), 2))  # then an upload, say

    outcome = simulate(spread(96, 2.0, 3.0, seed=6), stuck)
    assert outcome.polls <= 4.0
    assert outcome.late <= 0.05


def test_a_long_queue_before_progress_moves_is_not_given_up_early() -> None:
    def queued(age: float, _latency: float) -> tuple[str, float | None]:
        return ("Pending", 0.0) if age < 45.0 else ("Generating", round((age - 45.0) / 30, 2))

    tracker = LatencyTracker()
    simulate(spread(8, 2.0, 3.0, seed=8), rounded, tracker=tracker)  # short ones taught first
    outcome = simulate([75.0], queued, tracker=tracker, parallel=1)
    assert outcome.late <= 0.1  # found, soon after it was ready
    assert outcome.polls <= 25  # waits grow with the task's age: a quarter of it at most
