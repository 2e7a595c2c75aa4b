"""One request to the API as it goes: its ids, its cost, its polls, and how it reports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kontext_pipeline.providers._base import EditRequest, EventSink, ProviderEvent

__all__ = ["TaskLostError", "TaskState"]


class TaskLostError(Exception):
    """A task of an earlier run that cannot be collected: it is submitted again."""


@dataclass
class TaskState:
    """One request in flight: what events and messages need to know about it."""

    request: EditRequest
    emit: EventSink
    task_id: str = ""
    polling_url: str = ""
    cost: float | None = None
    polls: int = 0
    submitted_at: float = 0.0  # on the provider's clock
    resumed: bool = False  # submitted by an earlier run: its latency says nothing typical
    deadline_at: float = math.inf  # on the provider's clock: when polling for it gives up

    @property
    def label(self) -> str:
        return self.request.label or self.request.model

    def event(self, kind: Any, **fields: Any) -> None:
        self.emit(ProviderEvent(self.request.label, kind, request_id=self.task_id or None,
                                **fields))
