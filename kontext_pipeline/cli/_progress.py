"""Showing a run's progress: a live table on a terminal, one line per event in CI logs.

What an event carries (a prompt in a reason, an API's status word or failure detail) is shown
as text, never read as rich markup, and each event stays one line: see
:func:`kontext_pipeline._support.text.printable`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kontext_pipeline._support.text import printable
from kontext_pipeline.outputs._plan_views import cost
from kontext_pipeline.runner._executor import RunEvent
from kontext_pipeline.runner._pipelines import MANIFEST, REPORT, PipelineReport, RunStart

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = ["LiveProgress", "PlainProgress", "Progress", "SilentProgress", "summary"]

_STATES = {
    "queued": "queued", "submitted": "submitted", "polling": "polling", "retrying": "retrying",
    "downloading": "downloading", "done": "done", "cached": "cached", "failed": "failed",
    "skipped": "skipped", "waiting": "waiting",
}
_FINAL = ("done", "cached", "failed", "skipped")
_PLAIN_KINDS = ("waiting", "submitted", "retrying", "done", "failed", "skipped", "warning")
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
        self.echo(f"run: {printable(start.describe())}")
        for task, why in start.reasons.items():
            self.echo(f"{printable(task)}: runs: {printable(why)}")

    def event(self, event: RunEvent) -> None:
        if event.kind not in _PLAIN_KINDS:
            return
        detail = f": {printable(event.message)}" if event.message else ""
        self.echo(f"{printable(event.task.id)}: {event.kind}{detail}")

    def note(self, message: str) -> None:
        self.echo(f"warning: {printable(message)}")

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
        self._print("", "", f"run: {self.headline}")
        for task, why in start.reasons.items():
            self._print("", "", f"{task}: runs: {why}")

    def event(self, event: RunEvent) -> None:
        if event.kind == "warning":
            self._print("warning", "yellow", f"{event.task.id}: {event.message}")
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
            self._print("failed", "red", f"{event.task.id}: {event.message}")

    def note(self, message: str) -> None:
        self._print("warning", "yellow", message)

    def _print(self, label: str, style: str, message: str) -> None:
        """One line above the table: ``label`` in ``style``, then ``message`` as text."""
        from rich.text import Text  # noqa: PLC0415

        line = Text.assemble((label, style), " ") if label else Text()
        line.append(printable(message))
        self.console.print(line, highlight=False)

    def _render(self) -> Any:
        from rich.table import Table  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        rows = list(self.rows.items())  # at once: events add rows while the display draws
        counts = {s: sum(1 for _, r in rows if r.state == s) for s in _FINAL}
        running = [(k, r) for k, r in rows if r.state not in _FINAL]
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column("step", no_wrap=True)
        table.add_column("state", no_wrap=True)
        table.add_column("detail", overflow="ellipsis", no_wrap=True)
        for key, row in running[:_MAX_ROWS]:
            detail = f"{row.progress:.0%}" if row.progress is not None else row.message
            table.add_row(_cell(key), _cell(row.state), _cell(detail))
        if len(running) > _MAX_ROWS:
            table.add_row(_cell(f"… and {len(running) - _MAX_ROWS} more"))
        finished = sum(counts.values())
        table.add_row(Text.assemble((f"{finished}/{self.total}", "bold"), " finished"),
                      _cell(f"{counts['cached']} cached"),
                      _cell(f"{counts['done']} made, {counts['failed']} failed, "
                            f"{counts['skipped']} skipped"))
        return table

    def close(self) -> None:
        self.live.stop()


def _cell(text: str) -> Text:
    """A table cell that shows ``text`` as it is (a str cell would be read as markup)."""
    from rich.text import Text  # noqa: PLC0415

    return Text(printable(text))


def summary(report: PipelineReport) -> str:
    """A recipe's last line: its steps, what came from the cache, what was made (a failed or
    moderated step was not), what it cost, and where its manifest and report are."""
    records = report.records
    steps = len(records)
    counts = [f"{steps} step{'' if steps == 1 else 's'}",
              f"{sum(1 for r in records if r.ok and r.cache == 'hit')} cached",
              f"{sum(1 for r in records if r.ok and r.cache == 'miss')} made"]
    for status in ("failed", "skipped", "missing"):
        number = sum(1 for r in records if r.status == status)
        if number:
            counts.append(f"{number} {status}")
    credits = sum(r.credits for r in records)
    return (f"{report.plan.spec.name}: {', '.join(counts)}, "
            f"{cost(credits, report.plan.provider, money=False)} -> "
            f"{report.out_dir / MANIFEST}, {report.out_dir / REPORT}")
