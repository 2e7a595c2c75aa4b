"""How each task of a run ended: what the executor hands to the outputs (export, manifest,
report)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kontext_pipeline.plan._plan import Task
from kontext_pipeline.store._cache import CacheEntry

__all__ = ["Status", "StepRecord"]

Status = Literal["done", "failed", "skipped", "missing"]


@dataclass(frozen=True)
class StepRecord:
    """How one task ended in this run."""

    task: Task
    status: Status
    cache: Literal["hit", "miss"]
    key: str | None = None
    inputs_sha256: tuple[str, ...] = ()
    entry: CacheEntry | None = None
    error: str | None = None
    credits: float = 0  # FLUX.2's echoed cost may be fractional
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "done"
