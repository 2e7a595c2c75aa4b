"""What finished tasks taught about a model: how long its tasks take, whether (and how
precisely) its answers report ``progress`` and how far that progress's estimate was off, and
at what share of their latency each in-flight status shows."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from kontext_pipeline._support.timeouts import within

__all__ = ["Finished", "LatencyTracker", "Learnt", "Reading"]

UNTRUSTED_SPREAD = 0.15
"""Progress whose estimates were off by more than this share (between the quartiles of the
ratio of latency to estimate) is not aimed at: its polls follow the latencies learnt instead."""

MIN_SHARES = 4
"""Readings of a status that finished tasks gave before it bounds the latency of a task in it."""


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
    last in-flight answer), with the answers it gave before, and the latency its progress
    suggested at the last answer that reported one (``estimate``)."""

    ready: float
    pending: float = 0.0
    readings: Sequence[Reading] = ()
    estimate: float | None = None

    @property
    def latency(self) -> float:
        """The best guess of when it became ready, between its last two polls: the progress's
        estimate when that lies between them (or the nearer end), else the middle; a task
        ready at its first poll is taken to have taken that long."""
        pending = max(0.0, min(self.pending, self.ready))
        if self.estimate is not None:
            return min(max(self.estimate, pending), self.ready)
        return (pending + self.ready) / 2 if pending > 0 else self.ready


@dataclass(frozen=True)
class Learnt:
    """A snapshot of what is known about one model, for placing the next poll."""

    latencies: tuple[float, ...] = ()  # recent tasks' latencies, sorted
    reports_progress: bool = False
    resolution: float = 0.005  # half a unit of the last decimal the progress is given to
    bias: float = 1.0  # the median ratio of a latency to its progress's estimate
    trust_progress: bool = True
    status_shares: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    def bounds(self, reading: Reading) -> tuple[float, float]:
        """The latencies consistent with ``reading``'s status, from the shares of their
        latency at which finished tasks showed it; (0, inf) until a few tasks have."""
        shares = self.status_shares.get(reading.status)
        if shares is None or shares[2] < MIN_SHARES or reading.elapsed <= 0:
            return 0.0, math.inf
        low, high, _ = shares
        return reading.elapsed / max(high, 1e-9), (
            reading.elapsed / low if low > 0 else math.inf)


@dataclass
class _Model:
    window: int
    finished: deque[Finished] = field(init=False)
    ratios: deque[float] = field(init=False)
    reports_progress: bool = False
    decimals: int = 0
    shares: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.finished = deque(maxlen=self.window)
        self.ratios = deque(maxlen=self.window)


class LatencyTracker:
    """Recent finished tasks per model, and a signal for the tasks still waiting whenever one
    finishes (what it taught may bring their next poll forward)."""

    def __init__(self, window: int = 32) -> None:
        self.window = window
        self._models: dict[str, _Model] = {}
        self._news: dict[str, asyncio.Event] = {}

    def _model(self, model: str) -> _Model:
        found = self._models.get(model)
        if found is None:
            found = self._models[model] = _Model(self.window)
        return found

    def observe(self, model: str, progress: float | None) -> None:
        """An in-flight answer of ``model`` reported ``progress`` (or none)."""
        if progress is None or not 0 < progress < 1:
            return
        known = self._model(model)
        known.reports_progress = True
        text = repr(float(progress))
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 6
        known.decimals = max(known.decimals, min(decimals, 6))

    def record(self, model: str, seconds: float | Finished) -> None:
        """A task of ``model`` was seen ready (after ``seconds``, or as ``Finished`` tells)."""
        done = seconds if isinstance(seconds, Finished) else Finished(ready=seconds,
                                                                      pending=seconds)
        known = self._model(model)
        known.finished.append(done)
        latency = done.latency
        if done.estimate and latency > 0:
            known.ratios.append(latency / done.estimate)
        if latency > 0:
            for reading in done.readings:
                share = min(1.0, reading.elapsed / latency)
                low, high, count = known.shares.get(reading.status, (share, share, 0))
                known.shares[reading.status] = min(low, share), max(high, share), count + 1
        news = self._news.pop(model, None)
        if news is not None:
            news.set()

    def learnt(self, model: str) -> Learnt:
        known = self._models.get(model)
        if known is None:
            return Learnt()
        ratios = sorted(known.ratios)
        bias, trust = 1.0, True
        if ratios:
            bias = statistics.median(ratios)
            if len(ratios) >= 4:
                quartiles = statistics.quantiles(ratios, n=4)
                trust = (quartiles[2] - quartiles[0]) / bias <= UNTRUSTED_SPREAD
        return Learnt(
            latencies=tuple(sorted(done.latency for done in known.finished)),
            reports_progress=known.reports_progress,
            resolution=0.5 * 10.0 ** -max(known.decimals, 1), bias=bias, trust_progress=trust,
            status_shares=dict(known.shares))

    def expected(self, model: str) -> float | None:
        """The median of the recent latencies."""
        known = self._models.get(model)
        if known is None or not known.finished:
            return None
        return statistics.median(done.latency for done in known.finished)

    def latest(self, model: str) -> float | None:
        """The latency of the task of ``model`` that finished last."""
        known = self._models.get(model)
        return known.finished[-1].latency if known is not None and known.finished else None

    async def wait(self, model: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if a task of ``model`` finished meanwhile."""
        news = self._news.setdefault(model, asyncio.Event())
        try:
            await within(timeout, news.wait())
        except asyncio.TimeoutError:
            return False
        return True
