"""Progress rendering: plain lines for logs, a live table for terminals."""

from __future__ import annotations

from rich.console import Console

from kontext_pipeline import build_plan, load_spec
from kontext_pipeline.executor import RunEvent
from kontext_pipeline.plan import Task
from kontext_pipeline.progress import LiveProgress, PlainProgress
from kontext_pipeline.runner import RunStart
from tests.conftest import PIPELINES


def tasks() -> list[Task]:
    return list(build_plan(load_spec(PIPELINES / "poster-chain.yaml")).tasks)


def test_plain_progress_prints_state_changes_only_and_counts_cached_steps() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append)
    first, second, _ = tasks()
    progress.start(RunStart(3, 1, 12))
    for event in (RunEvent("cached", first), RunEvent("queued", second),
                  RunEvent("submitted", second), RunEvent("polling", second, 0.5),
                  RunEvent("retrying", second, message="poll: HTTP 503; retrying in 1.0 s"),
                  RunEvent("done", second)):
        progress.event(event)
    progress.close()
    assert lines == [
        "run: 3 steps: 1 cached, 2 to run, expected cost 12 credits ($0.12)",
        "poster-chain/default/sign: submitted",
        "poster-chain/default/sign: retrying: poll: HTTP 503; retrying in 1.0 s",
        "poster-chain/default/sign: done",
    ]


def test_live_progress_shows_steps_in_flight_and_counts() -> None:
    console = Console(record=True, force_terminal=True, width=120)
    progress = LiveProgress(console)
    first, second, third = tasks()
    progress.start(RunStart(3, 1, 12))
    progress.event(RunEvent("cached", first))
    progress.event(RunEvent("polling", second, 0.42))
    progress.event(RunEvent("failed", third, message="Content Moderated"))
    table = Console(record=True, width=120)
    table.print(progress._render())
    frame = [" ".join(line.split()) for line in table.export_text().splitlines()]
    progress.close()
    assert frame == ["poster-chain/default/sign polling 42%",
                     "2/3 finished 1 cached 0 made, 1 failed, 0 skipped"]
    text = console.export_text()
    assert "run: 3 steps: 1 cached, 2 to run, expected cost 12 credits ($0.12)" in text
    assert "failed poster-chain/default/relight: Content Moderated" in text
