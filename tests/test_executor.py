"""The scheduler's bookkeeping: steps that make the very same request share it, and the journal
keeps an accepted request exactly as long as its result may still be collected."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kontext_pipeline.outputs._records import StepRecord
from kontext_pipeline.plan._plan import build_plan
from kontext_pipeline.providers._base import (
    AcceptedSink,
    EditRequest,
    EditResult,
    EventSink,
    ProviderEvent,
)
from kontext_pipeline.providers._policies import ActiveTaskLimiter, PollPolicy
from kontext_pipeline.recipe._spec import load_spec
from kontext_pipeline.runner._executor import RunEvent, claim_bound, execute
from kontext_pipeline.runner._journal import Journal
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.store._cache import Cache, CacheEntry
from kontext_pipeline.store._claims import Claim
from tests.bfl_helpers import provider_for
from tests.conftest import Start, WriteRecipe


def run(recipe: Path, server: BackgroundServer, tmp_path: Path, *,
        deadline: float = 30.0) -> tuple[list[str], list[RunEvent], Journal]:
    plan = build_plan(load_spec(recipe), provider="bfl")
    journal = Journal(tmp_path / "journal")
    events: list[RunEvent] = []
    settled: list[StepRecord] = []
    provider = provider_for(server)
    provider.polling = PollPolicy(first=0.02, max_interval=0.05, deadline=deadline)

    async def go() -> list[StepRecord]:
        try:
            return await execute([plan], cache=Cache(tmp_path / "cache"), provider=provider,
                                 on_event=events.append, journal=journal,
                                 on_settled=settled.append)
        finally:
            await provider.aclose()

    records = asyncio.run(go())
    # each task's record is told once, as it settles: a step after the step it reads
    assert sorted(settled, key=records.index) == records
    for record in settled:
        assert all(settled.index(parent) < settled.index(record) for parent in settled
                   if parent.task.variant == record.task.variant
                   and any(image.name == parent.task.step for image in record.task.images))
    return ([f"{r.task.variant}/{r.task.step}: {r.status} {r.cache}" for r in records], events,
            journal)


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
    records, _, journal = run(recipe, server, tmp_path, deadline=1.0)  # 'fine' ends long before
    assert records == ["default/fine: done miss", "default/refused: failed miss",
                       "default/slow: failed miss"]
    (kept,) = list(journal.entries())
    assert kept.label == "outcomes/default/slow"  # it may still finish: a later run polls it
    assert kept.accepted.api_base == server.url


def test_two_runs_sharing_a_cache_make_each_request_once(
        bfl_server: Start, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    """Two runs in one event loop (each with its own provider, as two processes would have),
    started together on one cache: every key is submitted once, made by one run and taken from
    the cache by the other, which waited for it."""
    recipe = write_recipe("""
        version: 1
        name: shared
        inputs: {photo: photo.png}
        matrix:
          n: [1, 2, 3, 4, 5, 6]
        steps:
          - {id: paint, image: photo, prompt: "Paint stripe number {{ n }}"}
          - {id: frame, prompt: "Frame picture {{ n }} in gold"}
    """)
    server = bfl_server(latency=0.2)
    plan = build_plan(load_spec(recipe), provider="bfl")
    events: list[list[RunEvent]] = [[], []]

    async def one(sink: list[RunEvent]) -> list[tuple[str, str, str]]:
        provider = provider_for(server)
        try:
            records = await execute([plan], cache=Cache(tmp_path / "cache"), provider=provider,
                                    on_event=sink.append,
                                    journal=Journal(tmp_path / "cache" / "v1" / "journal"))
        finally:
            await provider.aclose()
        return [(r.task.id, r.status, r.cache) for r in records]

    async def both() -> list[list[tuple[str, str, str]]]:
        return list(await asyncio.gather(one(events[0]), one(events[1])))

    first, second = asyncio.run(both())
    assert sorted(server.state.submits.values()) == [1] * 12
    assert all(status == "done" for _, status, _ in first + second)
    for (task, _, mine), (_, _, theirs) in zip(first, second, strict=True):
        assert {mine, theirs} == {"hit", "miss"}, task  # made by one run, cached for the other
    for sink, records in zip(events, (first, second), strict=True):
        waited = {e.task.id for e in sink if e.kind == "waiting"}
        assert {e.message for e in sink if e.kind == "waiting"} <= {
            "another run sharing the cache is making this image; waiting for it"}
        assert waited <= {task for task, _, cache in records if cache == "hit"}
    assert not list((tmp_path / "cache" / "v1" / "journal").rglob("*.*"))  # nothing left


def test_a_run_whose_claims_cannot_be_locked_warns_once_and_goes_on(
        bfl_server: Start, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    recipe = write_recipe("""
        version: 1
        name: unlocked
        matrix:
          n: [1, 2]
        steps:
          - {id: base, prompt: "A lighthouse number {{ n }}"}
    """)
    (tmp_path / "journal").write_text("a file where the journal's folder should be")
    server = bfl_server()
    records, events, _ = run(recipe, server, tmp_path)
    assert records == ["n=1/base: done miss", "n=2/base: done miss"]
    claims = [e.message or "" for e in events if e.kind == "warning"
              and "runs sharing this cache" in (e.message or "")]
    assert len(claims) == 1
    key = claims[0].split("/")[-1].split(".lock")[0]
    assert claims[0] == (
        f"cannot lock {tmp_path / 'journal' / key[:2] / key}.lock: Not a directory; runs "
        "sharing this cache may each pay for a step that neither has finished")


def test_a_run_cancelled_as_a_step_finishes_ends_cancelled(
        bfl_server: Start, write_recipe: WriteRecipe, tmp_path: Path) -> None:
    """Ctrl-C lands between a step's last await and the moment its record is set: Python runs
    the signal handler in the middle of that step, and it cancels the run (so the step waiting
    on this one is cancelled) before the step sets its record. Here the run is cancelled at
    that very point, as its result is stored. The run ends cancelled (exit 130), the result
    stays stored; before, the waiting step's cancellation cancelled the future it awaited,
    and setting the record raised InvalidStateError (exit 1)."""
    recipe = write_recipe("""
        version: 1
        name: chain
        steps:
          - {id: first, prompt: "A lighthouse at dawn"}
          - {id: second, prompt: "Paint it red"}
    """)
    server = bfl_server()
    plan = build_plan(load_spec(recipe), provider="bfl")
    provider = provider_for(server)
    cache = Cache(tmp_path / "cache")
    stored: list[str] = []
    runs: list[asyncio.Future[list[StepRecord]]] = []

    def interrupt(entry: CacheEntry, _data: bytes) -> None:  # what the SIGINT handler does
        stored.append(entry.key)
        runs[0].cancel()

    async def go() -> None:
        runs.append(asyncio.ensure_future(execute([plan], cache=cache, provider=provider,
                                                  on_stored=interrupt)))
        try:
            with pytest.raises(asyncio.CancelledError):
                await runs[0]
        finally:
            await provider.aclose()

    asyncio.run(go())
    assert len(stored) == 1  # the first step's; the second never started
    assert cache.lookup(stored[0]).entry is not None
    assert sum(server.state.submits.values()) == 1


class CountingJournal(Journal):
    """A journal that counts the claims (open lock files) held at once."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.held_now = 0
        self.peak = 0
        self.taken = 0

    def claim(self, key: str) -> Claim | None:
        claim = super().claim(key)
        if claim is None:
            return None
        self.taken += 1
        self.held_now += 1
        self.peak = max(self.peak, self.held_now)
        release = claim.release

        def counted() -> None:
            self.held_now -= 1
            release()

        claim.release = counted  # type: ignore[method-assign]
        return claim


class SlotProvider:
    """Makes a tiny image per request, each under a slot of its active-task limiter."""

    name = "fake"

    def __init__(self, total: int) -> None:
        self.limiter = ActiveTaskLimiter(total, {})

    async def generate(self, request: EditRequest, on_event: EventSink | None = None, *,
                       resume: object = None, on_accepted: AcceptedSink | None = None,
                       ) -> EditResult:
        if on_event is not None:
            on_event(ProviderEvent(request.label, "queued"))
        async with self.limiter.slot(request.model):
            for _ in range(3):
                await asyncio.sleep(0)
        image = request.prompt.encode()
        return EditResult(image=image, image_format="png", width=1, height=1,
                          request_id=request.label, seed=request.seed, cost=1, polls=1,
                          submitted_at=0.0, finished_at=0.0)

    async def aclose(self) -> None:
        return None


def test_a_run_holds_no_more_claims_than_its_slots_and_a_margin(
        write_recipe: WriteRecipe, tmp_path: Path) -> None:
    """100 independent ready steps, 4 active-task slots: each claim is an open file, so only a
    few more steps than there are slots hold one; before, all 100 did at once (and a large
    matrix ran out of file handles)."""
    numbers = ", ".join(str(n) for n in range(100))
    recipe = write_recipe(f"""
        version: 1
        name: many
        matrix:
          n: [{numbers}]
        steps:
          - {{id: base, prompt: "A lighthouse number {{{{ n }}}}"}}
    """)
    plan = build_plan(load_spec(recipe), provider="bfl")
    provider = SlotProvider(total=4)
    journal = CountingJournal(tmp_path / "journal")
    records = asyncio.run(execute([plan], cache=Cache(tmp_path / "cache"),
                                  provider=provider, journal=journal))
    assert [r.status for r in records] == ["done"] * 100
    assert journal.taken == 100
    assert journal.held_now == 0
    assert claim_bound(provider) == 4 + 8
    assert journal.peak <= claim_bound(provider)
    assert provider.limiter.peak <= 4


def test_the_claim_bound_follows_the_provider_limit() -> None:
    assert claim_bound(SlotProvider(total=30)) == 38
    assert claim_bound(None) == 24 + 8  # no limiter known: the API's default limit
