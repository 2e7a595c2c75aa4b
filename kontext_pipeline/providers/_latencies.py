"""What finished tasks taught about a model: how long its tasks take, whether (and how
precisely) its answers report ``progress`` and how far that progress's estimate was off, and
at what share of their latency each in-flight status shows."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from kontext_pipeline._support.timeouts import within

__all__ = ["Finished", "LatencyTracker", "Learnt", "Reading"]

UNTRUSTED_SPREAD = 0.15
"""Progress whose estimates were off by more than this share (between the quartiles of the
ratio of latency to estimate) is not aimed at: its polls follow the latencies learnt instead."""

MIN_TASKS = 4
"""Finished tasks needed before what they show (a status's shares, a bias) is relied on."""


def median(values: Sequence[float]) -> float:
    """The median of sorted ``values`` (not empty)."""
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


@dataclass(frozen=True)
class Reading:
    """One in-flight answer: ``elapsed`` seconds after the submit was answered, its status and
    its ``progress`` (0 to 1, when the API reported one)."""

    elapsed: float
    status: str
    progress: float | None = None


@dataclass(frozen=True)
class Finished:
    """A task seen ready at ``ready`` seconds, still in flight at ``pending`` seconds (its
    last in-flight answer; 0 if none), with the first and last answer it gave in each status,
    and ``estimate``: the latency its progress suggested when it was polled at that estimate
    (or, if it never was, at its last answer with usable progress)."""

    ready: float
    pending: float = 0.0
    readings: Sequence[Reading] = ()
    estimate: float | None = None

    @property
    def latency(self) -> float:
        """When it became ready, as far as its polls tell: the progress's estimate when that
        lies between its last two polls (or the nearer of them), else their middle (for a
        task ready at its first poll, half that poll's age: an early guess, which the polls it
        places find out and correct, where a late one would never be found out)."""
        pending = max(0.0, min(self.pending, self.ready))
        if self.estimate is not None:
            return min(max(self.estimate, pending), self.ready)
        return (pending + self.ready) / 2


@dataclass(frozen=True)
class Learnt:
    """A snapshot of what is known about one kind of task, for placing the next poll."""

    latencies: tuple[float, ...] = ()  # recent tasks' latencies, sorted
    reports_progress: bool = False
    resolution: float = 0.005  # half a unit of the last decimal the progress is given to
    bias: float = 1.0  # the median ratio of a latency to its progress's estimate
    trust_progress: bool = True
    status_shares: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return median(self.latencies) if self.latencies else None

    def bounds(self, reading: Reading) -> tuple[float, float]:
        """The latencies consistent with ``reading``'s status, from the shares of their
        latency at which recent finished tasks showed it; (0, inf) unless enough did."""
        shares = self.status_shares.get(reading.status)
        if shares is None or reading.elapsed <= 0:
            return 0.0, math.inf
        low, high = shares
        return reading.elapsed / max(high, 1e-9), (
            reading.elapsed / low if low > 0 else math.inf)


@dataclass
class _Kind:
    window: int
    finished: deque[Finished] = field(init=False)
    reports_progress: bool = False
    decimals: int = 0
    snapshot: Learnt | None = None  # what ``learnt`` last made, until something changes

    def __post_init__(self) -> None:
        self.finished = deque(maxlen=self.window)

    def learnt(self) -> Learnt:
        if self.snapshot is None:
            latencies = sorted(done.latency for done in self.finished)
            ratios = sorted(done.latency / done.estimate for done in self.finished
                            if done.estimate and done.latency > 0)
            bias, trust = 1.0, True
            if len(ratios) >= MIN_TASKS:
                bias = median(ratios)
                quarter = len(ratios) // 4
                trust = (ratios[-1 - quarter] - ratios[quarter]) / bias <= UNTRUSTED_SPREAD
            self.snapshot = Learnt(
                latencies=tuple(latencies), reports_progress=self.reports_progress,
                resolution=0.5 * 10.0 ** -max(self.decimals, 1), bias=bias,
                trust_progress=trust, status_shares=self._shares())
        return self.snapshot

    def _shares(self) -> dict[str, tuple[float, float]]:
        """Per status, the least and greatest share of their latency at which the recent
        finished tasks answered it, once enough tasks did."""
        lows: dict[str, list[float]] = {}
        highs: dict[str, list[float]] = {}
        for done in self.finished:
            latency = done.latency
            if latency <= 0:
                continue
            mine: dict[str, list[float]] = {}
            for reading in done.readings:
                mine.setdefault(reading.status, []).append(min(1.0, reading.elapsed / latency))
            for status, shares in mine.items():
                lows.setdefault(status, []).append(min(shares))
                highs.setdefault(status, []).append(max(shares))
        return {status: (min(low), max(highs[status])) for status, low in lows.items()
                if len(low) >= MIN_TASKS}


class LatencyTracker:
    """Recent finished tasks per kind (a model, and what else makes its tasks take longer),
    and a signal for the tasks still waiting whenever one finishes (what it taught may bring
    their next poll forward)."""

    def __init__(self, window: int = 32) -> None:
        self.window = window
        self._kinds: dict[str, _Kind] = {}
        self._news: dict[str, asyncio.Event] = {}

    def _kind(self, kind: str) -> _Kind:
        found = self._kinds.get(kind)
        if found is None:
            found = self._kinds[kind] = _Kind(self.window)
        return found

    def observe(self, kind: str, progress: float | None) -> None:
        """An in-flight answer of a task of ``kind`` reported ``progress`` (or none)."""
        if progress is None or not 0 < progress < 1:
            return
        known = self._kind(kind)
        text = repr(float(progress))
        decimals = min(len(text.split(".")[1]) if "." in text and "e" not in text else 6, 6)
        if not known.reports_progress or decimals > known.decimals:
            known.reports_progress = True
            known.decimals = max(known.decimals, decimals)
            known.snapshot = None

    def record(self, kind: str, seconds: float | Finished) -> None:
        """A task of ``kind`` was seen ready (after ``seconds``, or as ``Finished`` tells)."""
        done = seconds if isinstance(seconds, Finished) else Finished(ready=seconds,
                                                                      pending=seconds)
        known = self._kind(kind)
        known.finished.append(done)
        known.snapshot = None
        news = self._news.pop(kind, None)
        if news is not None:
            news.set()

    def learnt(self, kind: str) -> Learnt:
        known = self._kinds.get(kind)
        return Learnt() if known is None else known.learnt()

    async def wait(self, kind: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if a task of ``kind`` finished meanwhile."""
        news = self._news.setdefault(kind, asyncio.Event())
        try:
            await within(timeout, news.wait())
        except asyncio.TimeoutError:
            return False
        return True
