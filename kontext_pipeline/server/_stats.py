"""``GET /_stats``: the server's own counters (not a BFL endpoint), what benchmarks and tests read
to see what a client did: how many submits, polls and downloads, how many tasks were active at
once, and per task when it was submitted, how long it took and how often it was polled."""

from __future__ import annotations

import time
from typing import Any

from kontext_pipeline.server._network import endpoint_of
from kontext_pipeline.server._state import ServerState, TaskRecord

__all__ = ["stats_body"]


def stats_body(state: ServerState) -> dict[str, Any]:
    """The counters as ``/_stats`` answers them. Times are epoch seconds (this machine's clock,
    so that a benchmark can set them against a process it launched); ``first_submit`` is when
    the first accepted submit's request reached the server."""
    tasks = list(state.tasks.values())  # in submit order: a dict keeps insertion order
    return {
        "submits": sum(state.submits.values()),
        "submits_received": sum(1 for r in state.requests
                                if endpoint_of(r.method, r.path) == "submit"),
        "repeated_submits": sum(n - 1 for n in state.submits.values() if n > 1),
        "polls": sum(1 for r in state.requests if r.path.endswith("/get_result")),
        "downloads": sum(1 for r in state.requests if r.path.startswith("/delivery/")),
        "peak_active": state.peak_active,
        "peak_by_model": dict(state.peak_by_model),
        "active": state.active(time.monotonic()),
        "credits_charged": state.credits_charged,
        "first_submit": min(task.arrived for task in tasks) if tasks else None,
        "last_download": state.last_download,
        "tasks": [_task(task) for task in tasks],
    }


def _task(task: TaskRecord) -> dict[str, Any]:
    return {"id": task.id, "model": task.model, "prompt": task.prompt, "arrived": task.arrived,
            "submitted": task.started,
            "latency": task.latency, "polls": task.polls, "ready_seen": task.ready_seen}
