"""Progress rendering: plain lines for logs, a live table for terminals."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from kontext_pipeline import build_plan, load_recipe
from kontext_pipeline.cli._progress import LiveProgress, PlainProgress, summary
from kontext_pipeline.outputs._manifest import build_manifest
from kontext_pipeline.outputs._plan_views import cost
from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.plan._plan import Task
from kontext_pipeline.runner._executor import RunEvent
from kontext_pipeline.runner._pipelines import PipelineReport, RunStart
from tests.conftest import PIPELINES


def tasks() -> list[Task]:
    return list(build_plan(load_recipe(PIPELINES / "poster-chain.yaml")).tasks)


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


def hostile_events() -> tuple[RunStart, list[RunEvent], str]:
    """A run whose reasons, events and note hold rich markup and control characters."""
    first, second, third = tasks()
    start = RunStart(3, 0, 12, reasons={first.id: "prompt: [-x-]{+[/b] \x1b[2J+}"})
    events = [RunEvent("retrying", second, message="poll: [/x] \x1b]0;t\x07\nfake"),
              RunEvent("warning", third, message="status '[bold]\u202e'"),
              RunEvent("failed", third, message="[/red] gone\r")]
    return start, events, "[/yellow] note \x1b[2J"


def test_plain_progress_shows_markup_as_is_and_escapes_control_characters() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append)
    start, events, note = hostile_events()
    progress.start(start)
    for event in events:
        progress.event(event)
    progress.note(note)
    assert lines == [
        "run: 3 steps: 0 cached, 3 to run, expected cost 12 credits ($0.12)",
        "poster-chain/default/recolor: runs: prompt: [-x-]{+[/b] \\x1b[2J+}",
        "poster-chain/default/sign: retrying: poll: [/x] \\x1b]0;t\\x07\\nfake",
        "poster-chain/default/relight: warning: status '[bold]\\u202e'",
        "poster-chain/default/relight: failed: [/red] gone\\r",
        "warning: [/yellow] note \\x1b[2J",
    ]


def test_live_progress_shows_markup_as_text_and_escapes_control_characters() -> None:
    console = Console(record=True, force_terminal=True, width=120, file=io.StringIO())
    progress = LiveProgress(console)
    start, events, note = hostile_events()
    progress.start(start)
    for event in events:
        progress.event(event)
    progress.note(note)
    table = Console(record=True, width=120, file=io.StringIO())
    table.print(progress._render())
    frame = [" ".join(line.split()) for line in table.export_text().splitlines()]
    progress.close()
    assert frame == ["poster-chain/default/sign retrying poll: [/x] \\x1b]0;t\\x07\\nfake",
                     "1/3 finished 0 cached 0 made, 1 failed, 0 skipped"]
    text = console.export_text()
    for line in ("run: 3 steps: 0 cached, 3 to run, expected cost 12 credits ($0.12)",
                 "poster-chain/default/recolor: runs: prompt: [-x-]{+[/b] \\x1b[2J+}",
                 "warning poster-chain/default/relight: status '[bold]\\u202e'",
                 "failed poster-chain/default/relight: [/red] gone\\r",
                 "warning [/yellow] note \\x1b[2J"):
        assert line in text
    assert isinstance(console.file, io.StringIO)
    for raw in ("\x1b[2J", "\x1b]0;t", "\u202e"):  # (rich itself writes \r)
        assert raw not in console.file.getvalue()


@pytest.mark.parametrize(("credits", "provider", "money", "text"), [
    (0, "bfl", True, "0 credits ($0.00)"),
    (1, "bfl", True, "1 credit ($0.01)"),
    (12, "bfl", False, "12 credits"),
    (1, "preview", False, "free (would cost 1 credit on BFL)"),
    (12, "preview", True, "free (would cost 12 credits ($0.12) on BFL)"),
    (0, "preview", True, "free"),
])
def test_costs_are_counted_in_the_right_plural_and_preview_is_free(
        credits: int, provider: str, money: bool, text: str) -> None:
    assert cost(credits, provider, money=money) == text


def test_the_first_line_of_a_preview_run_says_it_is_free() -> None:
    assert RunStart(1, 0, 1).describe() == ("1 step: 0 cached, 1 to run, expected cost 1 credit "
                                            "($0.01)")
    assert RunStart(3, 1, 8, provider="preview").describe() == (
        "3 steps: 1 cached, 2 to run, free (would cost 8 credits ($0.08) on BFL)")
    assert RunStart(3, 3, 0, provider="preview").describe() == "3 steps: 3 cached, 0 to run, free"


@pytest.mark.parametrize(("provider", "price"), [
    ("bfl", "1 credit"), ("preview", "free (would cost 1 credit on BFL)")])
def test_the_summary_counts_only_finished_steps_as_made(provider: str, price: str) -> None:
    plan = build_plan(load_recipe(PIPELINES / "poster-chain.yaml"), provider=provider)
    first, second, third = plan.tasks
    records = (StepRecord(first, "done", "miss", credits=1),
               StepRecord(second, "failed", "miss", error="Content Moderated"),
               StepRecord(third, "skipped", "miss", error="skipped"))
    out = Path("out") / "poster"
    assert summary(PipelineReport(plan, records, out, build_manifest(plan, records, {}))) == (
        f"poster-chain: 3 steps, 0 cached, 1 made, 1 failed, 1 skipped, {price} -> "
        f"{out / 'manifest.json'}, {out / 'report.html'}")
    cached = tuple(StepRecord(task, "done", "hit") for task in plan.tasks)
    assert summary(PipelineReport(plan, cached, out, build_manifest(plan, cached, {}))).startswith(
        f"poster-chain: 3 steps, 3 cached, 0 made, {'0 credits' if provider == 'bfl' else 'free'}"
        " -> ")
