"""The 2026 API against the bundled server on loopback: tasks that pass through Reasoning,
Generating and a status no client knows, and submits refused with a 5xx, which are retried.

What the server saw (the statuses it answered, the submits it received and accepted) is
asserted, not what the client guesses.
"""

from __future__ import annotations

import pytest

from kontext_pipeline.providers._base import EditRequest, ProviderEvent
from tests.bfl_helpers import KEY, generate, provider_for, run
from tests.conftest import RunCli, Start, WriteRecipe, exported_images

CHAIN = """
    version: 1
    name: phases
    inputs: {photo: photo.png}
    matrix:
      color: [teal, amber]
    steps:
      - {id: paint, image: photo, prompt: "Paint the door {{ color }}"}
      - {id: sky, prompt: "Add a stormy sky"}
      - {id: frame, prompt: "Frame it in oak"}
    outputs:
      frame: frame
"""
WARNING = ("warning: the API answered status 'Contemplating', which this client does not know; "
           "the task is taken to be still in flight until it ends or the 600 s deadline passes")


def test_a_chain_rides_through_every_phase_and_an_unknown_status(
        bfl_server: Start, run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(CHAIN)
    server = bfl_server(latency=1.0, phases=True, unknown_status="Contemplating")
    result = run_cli("run", str(recipe), "--api-base", server.url, "--cache-dir",
                     str(recipe.parent / "cache"), "--out", str(recipe.parent / "out"),
                     env={"BFL_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if ": warning: " in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(WARNING)
    tasks = server.state.tasks.values()
    assert len(tasks) == 6
    assert {tuple(t.statuses) for t in tasks} == {
        ("Pending", "Reasoning", "Contemplating", "Generating", "Ready")}
    assert max(server.state.submits.values()) == 1
    assert sorted(exported_images(recipe.parent / "out")) == [
        "color=amber/frame.png", "color=teal/frame.png",
        "steps/color=amber/paint.png", "steps/color=amber/sky.png",
        "steps/color=teal/paint.png", "steps/color=teal/sky.png"]


def test_a_task_whose_progress_goes_on_through_the_phases_is_shown_it(
        bfl_server: Start) -> None:
    server = bfl_server(latency=0.2, phases=True)
    events: list[ProviderEvent] = []
    result = run(generate(provider_for(server), EditRequest("flux-kontext-pro", "Blue", 3),
                          events))
    (task,) = server.state.tasks.values()
    assert task.statuses == ["Pending", "Reasoning", "Generating", "Ready"]
    assert result.polls >= 4
    polling = [e for e in events if e.kind == "polling"]
    assert len(polling) >= 3
    assert all(e.progress is not None and 0 <= e.progress <= 1 for e in polling)
    assert not [e for e in events if e.kind == "warning"]


@pytest.mark.parametrize("refusal", ["500", "502", "503", "504"])
def test_a_submit_refused_twice_with_a_5xx_is_sent_again_and_accepted_once(
        bfl_server: Start, refusal: str) -> None:
    server = bfl_server()
    server.state.script("submit", refusal, refusal)
    events: list[ProviderEvent] = []
    run(generate(provider_for(server), EditRequest("flux-kontext-pro", "Blue", 3,
                                                   label="t"), events))
    submits = [r.status for r in server.state.requests if r.method == "POST"]
    assert submits == [int(refusal), int(refusal), 200]  # received 3 times
    assert sum(server.state.submits.values()) == 1  # accepted once
    retries = [e.message or "" for e in events if e.kind == "retrying"]
    assert len(retries) == 2
    assert retries[0].startswith(f"submit: HTTP {refusal} (Internal server error); retrying in ")

