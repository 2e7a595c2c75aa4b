"""Background work: it waits for a lull in the results, and never outlives the run."""

from __future__ import annotations

import threading

from kontext_pipeline._support.threads import QuietWorker


def test_jobs_run_once_they_stop_coming_in_the_order_given() -> None:
    done: list[int] = []
    finished = threading.Event()
    worker = QuietWorker("test", quiet=0.05)
    for number in range(5):
        worker.submit(lambda number=number: done.append(number))  # type: ignore[misc]
    worker.submit(finished.set)
    assert finished.wait(10)
    worker.close()
    assert done == [0, 1, 2, 3, 4]


def test_a_failing_job_does_not_stop_the_others() -> None:
    done: list[str] = []
    finished = threading.Event()
    worker = QuietWorker("test", quiet=0.01)
    worker.submit(lambda: 1 / 0)
    worker.submit(lambda: done.append("after"))
    worker.submit(finished.set)
    assert finished.wait(10)
    worker.close()
    assert done == ["after"]


def test_closing_drops_what_has_not_started_and_takes_no_more() -> None:
    done: list[str] = []
    worker = QuietWorker("test", quiet=60.0)  # no lull comes before close
    worker.submit(lambda: done.append("never"))
    worker.close()
    worker.submit(lambda: done.append("too late"))
    assert done == []
    assert not worker._thread.is_alive()
