"""Work queued for low-priority threads: run in order, helped by whoever waits for it, and held
for a lull when asked."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest

from kontext_pipeline.runner._backlog import Backlog

WAIT = 30  # seconds: only a hang would reach it


def test_jobs_run_in_the_order_given_and_drain_waits_for_all() -> None:
    done: list[int] = []
    backlog = Backlog(1, "test")
    for number in range(20):
        backlog.submit(lambda number=number: done.append(number))  # type: ignore[misc]
    backlog.drain()
    assert done == list(range(20))
    backlog.close()


def test_the_thread_that_drains_does_the_jobs_not_started() -> None:
    started, release = threading.Event(), threading.Event()
    ran_on: list[threading.Thread] = []
    backlog = Backlog(1, "test")

    def blocking() -> None:
        started.set()
        assert release.wait(WAIT)

    def helped() -> None:
        ran_on.append(threading.current_thread())
        release.set()  # the worker's job may end now: it waited for this one to run elsewhere

    backlog.submit(blocking)
    assert started.wait(WAIT)  # the only worker is busy until ``helped`` has run
    backlog.submit(helped)
    backlog.drain()
    assert ran_on == [threading.main_thread()]
    backlog.close()


def test_a_failing_job_does_not_stop_the_others() -> None:
    done: list[str] = []
    backlog = Backlog(2, "test")
    backlog.submit(lambda: 1 / 0)
    backlog.submit(lambda: done.append("after"))
    backlog.drain()
    assert done == ["after"]
    backlog.close()


def test_closing_drops_what_has_not_started_waits_for_the_rest_and_takes_no_more() -> None:
    started, release = threading.Event(), threading.Event()
    done: list[str] = []
    backlog = Backlog(1, "test")

    def blocking() -> None:
        started.set()
        assert release.wait(WAIT)
        done.append("running")

    backlog.submit(blocking)
    assert started.wait(WAIT)
    backlog.submit(lambda: done.append("not started"))
    closing = threading.Thread(target=backlog.close)
    closing.start()
    while backlog._jobs:  # close drops the queued job first…
        threading.Event().wait(0.001)
    release.set()  # …then waits for the running one
    closing.join(WAIT)
    assert not closing.is_alive()
    backlog.submit(lambda: done.append("too late"))
    backlog.drain()
    assert done == ["running"]
    assert all(not thread.is_alive() for thread in backlog._threads)


def test_a_backlog_given_nothing_starts_no_thread() -> None:
    backlog = Backlog(2, "test")
    backlog.drain()
    backlog.close()
    assert backlog._threads == []


def test_closing_waits_for_a_job_a_drain_is_running() -> None:
    backlog = Backlog(0, "test")  # no workers of its own: only a drain runs jobs
    started, release, closed = threading.Event(), threading.Event(), threading.Event()
    finished: list[str] = []

    def job() -> None:
        started.set()
        release.wait(10)
        finished.append("job")

    backlog.submit(job)
    drainer = threading.Thread(target=backlog.drain)
    drainer.start()
    assert started.wait(10)

    def close() -> None:
        backlog.close()
        closed.set()

    closer = threading.Thread(target=close)
    closer.start()
    assert not closed.wait(0.2)  # still running the drained job: close waits for it
    release.set()
    assert closed.wait(10)
    assert finished == ["job"]
    drainer.join(10)
    closer.join(10)


def test_with_a_lull_the_workers_wait_for_it_until_hurried() -> None:
    ran_on: list[threading.Thread] = []
    ran = threading.Event()
    backlog = Backlog(1, "test", lull=WAIT * 2, patience=WAIT * 2)
    assert backlog.waits_for_lulls

    def job() -> None:
        ran_on.append(threading.current_thread())
        ran.set()

    backlog.submit(job)
    assert not ran.wait(0.3)  # no lull, nor patience, for a minute
    backlog.hurry()
    assert not backlog.waits_for_lulls
    assert ran.wait(WAIT)
    assert ran_on == backlog._threads  # the worker did it, once hurried
    backlog.close()


def test_a_lull_lets_the_workers_start() -> None:
    ran = threading.Event()
    backlog = Backlog(1, "test", lull=0.05, patience=WAIT * 2)
    backlog.submit(ran.set)
    assert ran.wait(WAIT)
    assert backlog.waits_for_lulls  # it waited, and waits for the next lull too
    backlog.close()


class Clock:
    """A clock the test sets; :func:`tell` makes the workers look at it again."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def noting(name: str, started: list[str], done: threading.Event | None = None
            ) -> Callable[[], None]:
    """A job that notes its name in ``started`` (and then sets ``done``)."""
    def job() -> None:
        started.append(name)
        if done is not None:
            done.set()
    return job


def tell(backlog: Backlog, clock: Clock, now: float) -> None:
    clock.now = now
    with backlog._changed:
        backlog._changed.notify_all()


def test_the_lull_counts_from_the_last_job_given() -> None:
    clock, started, done = Clock(), list[str](), threading.Event()
    backlog = Backlog(1, "test", lull=10.0, patience=25.0, clock=clock)
    backlog.submit(noting("a", started))
    tell(backlog, clock, 8.0)
    backlog.submit(noting("b", started, done))
    tell(backlog, clock, 15.0)  # 15 s after a, but only 7 after b: no lull yet
    assert not done.wait(0.3)
    assert started == []
    tell(backlog, clock, 18.0)
    assert done.wait(WAIT)
    assert started == ["a", "b"]
    backlog.close()


def test_the_patience_counts_from_each_job_given_while_jobs_keep_coming() -> None:
    clock, started = Clock(), list[str]()
    first, second = threading.Event(), threading.Event()
    backlog = Backlog(1, "test", lull=10.0, patience=25.0, clock=clock)
    backlog.submit(noting("a", started, first))
    tell(backlog, clock, 9.0)
    backlog.submit(noting("b", started, second))
    tell(backlog, clock, 18.0)
    backlog.submit(noting("c", started))
    tell(backlog, clock, 24.0)  # no lull since c, and a has waited 24 s of its 25
    assert not first.wait(0.3)
    tell(backlog, clock, 25.0)
    assert first.wait(WAIT)
    assert not second.wait(0.3)  # b has waited 16 s of its 25, and c only 7 s of the lull
    assert started == ["a"]
    backlog.close()


def test_a_drain_does_at_once_the_jobs_waiting_for_a_lull() -> None:
    done: list[int] = []
    backlog = Backlog(1, "test", lull=WAIT * 2, patience=WAIT * 2)
    for number in range(20):
        backlog.submit(lambda number=number: done.append(number))  # type: ignore[misc]
    backlog.drain()
    assert sorted(done) == list(range(20))
    assert not backlog.waits_for_lulls
    backlog.close()


def test_closing_drops_the_jobs_waiting_for_a_lull_and_ends_the_workers() -> None:
    done: list[str] = []
    backlog = Backlog(2, "test", lull=WAIT * 2, patience=WAIT * 2)
    backlog.submit(lambda: done.append("waiting"))
    closing = threading.Thread(target=backlog.close)
    closing.start()
    closing.join(WAIT)
    assert not closing.is_alive()
    assert done == []
    assert all(not thread.is_alive() for thread in backlog._threads)


@pytest.mark.parametrize(("lull", "patience"), [
    (-0.1, 1.0), (0.1, -1.0), (2.0, 1.0), (math.inf, math.inf), (math.nan, 1.0),
    (0.1, math.inf)])
def test_a_lull_or_patience_that_is_no_wait_to_make_is_refused(lull: float,
                                                                patience: float) -> None:
    with pytest.raises(ValueError, match=r"^lull and patience are finite seconds, with "
                                         r"0 <= lull <= patience$"):
        Backlog(1, "test", lull=lull, patience=patience)
