"""Showing a run's progress: a live table on a terminal, one line per event in CI logs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kontext_pipeline.executor import RunEvent
from kontext_pipeline.runner import RunStart

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["LiveProgress", "PlainProgress", "Progress", "SilentProgress"]

_STATES = {
    "queued": "queued", "submitted": "submitted", "polling": "polling", "retrying": "retrying",
    "downloading": "downloading", "done": "done", "cached": "cached", "failed": "failed",
    "skipped": "skipped",
}
_FINAL = ("done", "cached", "failed", "skipped")
_PLAIN_KINDS = ("submitted", "retrying", "done", "failed", "skipped", "warning")
_MAX_ROWS = 24


class Progress(Protocol):
    def start(self, start: RunStart) -> None: ...
    def event(self, event: RunEvent) -> None: ...
    def note(self, message: str) -> None:
        """Something about the run as a whole (a refused webhook notification)."""
    def close(self) -> None: ...


class SilentProgress:
    """For ``--json``: nothing but the result goes out."""

    def start(self, start: RunStart) -> None:
        pass

    def event(self, event: RunEvent) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class PlainProgress:
    """One line per state change, for logs: no polling chatter, and cached steps only counted
    (in the first line) since a cached re-run would otherwise log every step."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo

    def start(self, start: RunStart) -> None:
        self.echo(f"run: {start.describe()}")
        for task, why in start.reasons.items():
            self.echo(f"{task}: runs: {why}")

    def event(self, event: RunEvent) -> None:
        if event.kind not in _PLAIN_KINDS:
            return
        detail = f": {event.message}" if event.message else ""
        self.echo(f"{event.task.id}: {event.kind}{detail}")

    def note(self, message: str) -> None:
        self.echo(f"warning: {message}")

    def close(self) -> None:
        pass


@dataclass
class _Row:
    state: str
    progress: float | None = None
    message: str = ""


class LiveProgress:
    """A live table (rich) of the steps in flight, with overall counts."""

    def __init__(self, console: Console) -> None:
        from rich.live import Live  # noqa: PLC0415  (rich only where a terminal shows it)

        self.console = console
        self.rows: dict[str, _Row] = {}
        self.total = 0
        self.headline = ""
        self.live = Live(console=console, refresh_per_second=8, transient=True,
                         get_renderable=self._render)
        self.live.start()

    def start(self, start: RunStart) -> None:
        self.total = start.tasks
        self.headline = start.describe()
        self.console.print(f"run: {self.headline}", markup=False, highlight=False)
        for task, why in start.reasons.items():
            self.console.print(f"{task}: runs: {why}", markup=False, highlight=False)

    def event(self, event: RunEvent) -> None:
        if event.kind == "warning":
            self.console.print(f"[yellow]warning[/] {event.task.id}: {event.message}")
            return
        state = _STATES.get(event.kind)
        if state is None:
            return
        row = self.rows.setdefault(event.task.id, _Row(state))
        row.state = state
        if event.progress is not None:
            row.progress = event.progress
        if event.message:
            row.message = event.message
        if state == "failed":
            self.console.print(f"[red]failed[/] {event.task.id}: {event.message}")

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]warning[/] {message}", markup=True, highlight=False)

    def _render(self) -> Any:
        from rich.table import Table  # noqa: PLC0415

        counts = {s: sum(1 for r in self.rows.values() if r.state == s) for s in _FINAL}
        running = [(k, r) for k, r in self.rows.items() if r.state not in _FINAL]
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("step", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("detail", overflow="ellipsis", no_wrap=True)
        for key, row in running[:_MAX_ROWS]:
            detail = f"{row.progress:.0%}" if row.progress is not None else row.message
            table.add_row(key, row.state, detail)
        if len(running) > _MAX_ROWS:
            table.add_row(f"… and {len(running) - _MAX_ROWS} more", "", "")
        finished = sum(counts.values())
        table.add_row(f"[bold]{finished}/{self.total}[/] finished", f"{counts['cached']} cached",
                      f"{counts['done']} made, {counts['failed']} failed, "
                      f"{counts['skipped']} skipped")
        return table

    def close(self) -> None:
        self.live.stop()
