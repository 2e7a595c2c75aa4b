"""Where polls go: from a task's progress, from the model's learnt latencies and the shares of
them its statuses show at, and backing off while nothing is known (pure timing, no clock)."""

from __future__ import annotations

import random

import pytest

from kontext_pipeline.providers._latencies import Learnt, Reading
from kontext_pipeline.providers._polling import PollPolicy, PollTimer
from kontext_pipeline.providers.bfl._provider import share_done

NOTHING = Learnt()
PROGRESS = Learnt(reports_progress=True, resolution=0.005)
SPREAD = tuple(2.0 + i / 10 for i in range(10))  # 2.0, 2.1 … 2.9


def test_poll_timer_backs_off_until_latencies_are_known() -> None:
    policy = PollPolicy(first=0.5, factor=2.0, max_interval=3.0, jitter=0.0)
    timer = PollTimer(policy, random.Random(1))
    seen = []
    for _ in range(5):
        due = timer.due(NOTHING)
        seen.append(due)
        timer.pending(Reading(due, "Pending"), NOTHING)
    assert seen == pytest.approx([0.5, 1.5, 3.5, 6.5, 9.5])


def test_poll_timer_first_poll_spreads_concurrent_tasks() -> None:
    policy = PollPolicy(first=0.5, jitter=0.3)
    rng = random.Random(3)
    firsts = [PollTimer(policy, rng).due(NOTHING) for _ in range(100)]
    assert 0.35 <= min(firsts) < 0.4
    assert 0.6 < max(firsts) <= 0.65


def test_progress_is_read_then_sharpened_then_the_poll_comes_at_the_estimates_end() -> None:
    policy = PollPolicy(first=0.5, jitter=0.0, refine=0.92, sharp=0.015)
    timer = PollTimer(policy, random.Random(1))
    timer.pending(Reading(0.5, "Pending", 0.2), PROGRESS)  # 2.44 to 2.56 s: too wide
    assert timer.due(PROGRESS) == pytest.approx(0.92 * 0.5 / 0.205)  # sharpen it first
    timer.pending(Reading(2.25, "Pending", 0.9), PROGRESS)  # 2.486 to 2.514 s: sharp
    assert timer.due(PROGRESS) == pytest.approx(2.25 / 0.895)  # its end: never too early
    timer.pending(Reading(2.514, "Pending", 0.99), PROGRESS)  # a hair early after all
    assert timer.due(PROGRESS) == pytest.approx(2.514 / 0.985)
    timer.pending(Reading(2.552, "Pending", 1.0), PROGRESS)  # says done, is not: no estimate
    step = 2.514 / 0.985 * policy.step * policy.factor ** 2
    assert timer.due(PROGRESS) == pytest.approx(2.552 + step)  # small steps, growing


def test_a_learnt_bias_corrects_the_progress_estimate() -> None:
    biased = Learnt(reports_progress=True, resolution=0.005, bias=1.1)
    timer = PollTimer(PollPolicy(jitter=0.0), random.Random(1))
    timer.pending(Reading(2.7, "Pending", 0.9), biased)
    assert timer.due(biased) == pytest.approx(2.7 / 0.895 * 1.1)


def test_untrusted_progress_is_not_aimed_at() -> None:
    untrusted = Learnt(latencies=SPREAD, reports_progress=True, trust_progress=False)
    timer = PollTimer(PollPolicy(budget=3), random.Random(1))
    timer.pending(Reading(1.0, "Pending", 0.9), untrusted)  # would say 1.1 s
    assert timer.due(untrusted) == pytest.approx(2.4)  # the latencies learnt: half of 2.0…2.9


def test_a_model_with_progress_is_probed_early_at_a_share_of_its_shortest_latency() -> None:
    learnt = Learnt(latencies=SPREAD, reports_progress=True)
    assert PollTimer(PollPolicy(probe=0.6), random.Random(1)).due(learnt) == pytest.approx(1.2)


def test_latencies_within_sharp_of_each_other_need_no_probe() -> None:
    tight = Learnt(latencies=(2.0, 2.0, 2.01, 2.02), reports_progress=True)
    timer = PollTimer(PollPolicy(budget=3, sharp=0.015), random.Random(1))
    assert timer.due(tight) == pytest.approx(2.0)  # a third of the way into them
    timer.pending(Reading(2.0, "Pending", 1.0), tight)  # a hair early, no estimate: a step
    assert timer.due(tight) == pytest.approx(2.0 + 2.005 * 0.02)  # as fine as the latencies


def test_without_progress_polls_go_to_quantiles_of_the_latencies_still_possible() -> None:
    learnt = Learnt(latencies=SPREAD)
    policy = PollPolicy(budget=3, min_interval=0.02, step=0.02, factor=1.5, max_interval=4.0)
    timer = PollTimer(policy, random.Random(1))
    seen = []
    for _ in range(4):
        due = timer.due(learnt)
        seen.append(due)
        timer.pending(Reading(due, "Pending"), learnt)
    late = 0.9 / 3 * 1.5  # past every latency learnt: steps of the spread's share, growing
    assert seen == pytest.approx([2.3, 2.6, 2.9, 2.9 + late])


def test_a_status_bounds_the_latencies_still_possible() -> None:
    learnt = Learnt(latencies=SPREAD, status_shares={"Generating": (0.9, 1.0),
                                                     "Pending": (0.0, 0.3)})
    timer = PollTimer(PollPolicy(budget=3), random.Random(1))
    timer.pending(Reading(2.5, "Generating"), learnt)  # 90 % done or more: 2.5 to 2.78 s
    assert timer.due(learnt) == pytest.approx(2.6)  # quantile of 2.6 and 2.7 only
    unknown = Learnt(latencies=SPREAD, status_shares={"Pending": (0.0, 0.3)})
    timer = PollTimer(PollPolicy(budget=3), random.Random(1))
    timer.pending(Reading(2.5, "Generating"), unknown)  # nothing learnt of it: no bound
    assert timer.due(unknown) == pytest.approx(2.7)  # a half of 2.6 … 2.9


def test_retry_reschedules() -> None:
    timer = PollTimer(PollPolicy(), random.Random(1))
    timer.retry(1.0, 0.25)
    assert timer.due(NOTHING) == 1.25


def test_a_failed_poll_waits_its_retry_delay_even_when_the_estimate_says_ready() -> None:
    timer = PollTimer(PollPolicy(jitter=0.0), random.Random(1))
    timer.pending(Reading(1.9, "Pending", 0.95), PROGRESS)
    timer.retry(2.0, 1.5)  # e.g. a 503 with Retry-After: 1.5
    assert timer.due(PROGRESS) == 3.5  # not at once, although 2.0 s was the estimate
    assert timer.due(Learnt(latencies=(1.0,) * 4)) == 3.5  # nor by the latencies learnt


def test_what_a_finished_task_teaches() -> None:
    timer = PollTimer(PollPolicy(jitter=0.0), random.Random(1))
    timer.pending(Reading(0.5, "Pending", 0.2), PROGRESS)
    timer.pending(Reading(1.0, "Pending", 0.4), PROGRESS)
    timer.pending(Reading(2.25, "Generating", 0.9), PROGRESS)
    finished = timer.finished(2.6)
    assert (finished.ready, finished.pending) == (2.6, 2.25)
    assert finished.readings == (Reading(0.5, "Pending", 0.2), Reading(1.0, "Pending", 0.4),
                                 Reading(2.25, "Generating", 0.9))
    assert finished.estimate == pytest.approx((2.25 / 0.905 + 2.25 / 0.895) / 2)
    assert finished.latency == pytest.approx(finished.estimate)  # it lies between the polls


def test_only_a_number_from_0_to_1_is_progress() -> None:
    assert [share_done(v) for v in (0, 0.25, 1, True, "0.5", None, -0.1, 1.5)] == [
        0.0, 0.25, 1.0, None, None, None, None, None]
    assert share_done(float("nan")) is None
    assert share_done(float("inf")) is None
    assert share_done(10 ** 400) is None  # no float holds it: not an error


def test_a_policy_that_could_divide_by_zero_or_spin_is_refused() -> None:
    for bad in ({"min_progress": 0.0}, {"min_interval": 0.0}, {"factor": 0.5}, {"budget": 0}):
        with pytest.raises(ValueError, match="inconsistent poll policy"):
            PollPolicy(**bad)


def test_no_wait_between_polls_is_longer_than_a_quarter_of_the_tasks_age() -> None:
    timer = PollTimer(PollPolicy(jitter=0.0, max_interval=4.0, reach=0.25), random.Random(1))
    timer.pending(Reading(40.0, "Generating", 0.06), PROGRESS)  # "done after ~670 s"
    assert timer.due(PROGRESS) == pytest.approx(50.0)  # a look after 10 s, not at 670 s
