"""The scheduler's bookkeeping: steps that make the very same request share it, and the journal
keeps an accepted request exactly as long as its result may still be collected."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from kontext_pipeline.cache import Cache
from kontext_pipeline.executor import RunEvent, execute
from kontext_pipeline.journal import Journal
from kontext_pipeline.plan import build_plan
from kontext_pipeline.providers.policies import PollPolicy
from kontext_pipeline.server.run import BackgroundServer
from kontext_pipeline.spec import load_spec
from tests.bfl_helpers import provider_for
from tests.conftest import WriteRecipe

Start = Callable[..., BackgroundServer]


def run(recipe: Path, server: BackgroundServer, tmp_path: Path, *,
        deadline: float = 30.0) -> tuple[list[str], list[RunEvent], Journal]:
    plan = build_plan(load_spec(recipe), provider="bfl")
    journal = Journal(tmp_path / "journal")
    events: list[RunEvent] = []
    provider = provider_for(server)
    provider.polling = PollPolicy(first=0.02, max_interval=0.05, deadline=deadline)

    async def go() -> list[str]:
        try:
            records = await execute([plan], cache=Cache(tmp_path / "cache"), provider=provider,
                                    on_event=events.append, journal=journal)
        finally:
            await provider.aclose()
        return [f"{r.task.variant}/{r.task.step}: {r.status} {r.cache}" for r in records]

    return asyncio.run(go()), events, journal


def test_steps_making_the_same_request_share_one(bfl_server: Start, write_recipe: WriteRecipe,
                                                 tmp_path: Path) -> None:
    recipe = write_recipe("""
        version: 1
        name: twins
        matrix:
          size: [small, large]
        steps:
          - {id: base, prompt: "A lighthouse at dawn", seed: 5}
          - {id: label, prompt: "Write {{ size }} on it"}
    """)
    server = bfl_server()
    records, events, _ = run(recipe, server, tmp_path)
    assert records == ["size=small/base: done miss", "size=small/label: done miss",
                       "size=large/base: done hit", "size=large/label: done miss"]
    assert sorted(server.state.submits.values()) == [1, 1, 1]
    assert [e.task.variant for e in events if e.kind == "cached"] == ["size=large"]


def test_a_task_that_ended_is_forgotten_and_one_still_running_is_kept(
        bfl_server: Start, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    recipe = write_recipe("""
        version: 1
        name: outcomes
        steps:
          - {id: fine, prompt: "A quiet harbour"}
          - {id: refused, image: fine, prompt: "Something [[content-moderated]]"}
          - {id: slow, image: fine, prompt: "Something that takes all day [[never]]"}
    """)
    server = bfl_server()
    records, _, journal = run(recipe, server, tmp_path, deadline=0.3)
    assert records == ["default/fine: done miss", "default/refused: failed miss",
                       "default/slow: failed miss"]
    (kept,) = list(journal.entries())
    assert kept.label == "outcomes/default/slow"  # it may still finish: a later run polls it
    assert kept.accepted.api_base == server.url
