"""Poll placement against the bundled server when latencies vary: with the progress the API
reports, without it, and with the 2026 status phases. Counts are bounds (the contract is at
most 4 polls a task on average), never timings."""

from __future__ import annotations

import asyncio

import pytest

from kontext_pipeline.providers._base import EditRequest
from kontext_pipeline.providers._polling import PollPolicy
from kontext_pipeline.providers.bfl._provider import latency_kind
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.server._state import FaultConfig
from tests.bfl_helpers import provider_for, run
from tests.conftest import Start

MODEL = "flux-kontext-pro"


def chains(server: BackgroundServer, variants: int, steps: int) -> float:
    """Run ``variants`` chains of ``steps`` requests each with the real poll cadence; the
    polls per task the server answered."""
    provider = provider_for(server)
    provider.polling = PollPolicy()

    async def chain(n: int) -> None:
        for k in range(steps):
            await provider.generate(EditRequest(model=MODEL, prompt=f"Step {k} of {n}",
                                                seed=100 * n + k + 1, label=f"v{n}/s{k}"))

    async def all_chains() -> None:
        try:
            await asyncio.gather(*(chain(n) for n in range(variants)))
        finally:
            await provider.aclose()

    run(all_chains())
    tasks = list(server.state.tasks.values())
    assert len(tasks) == variants * steps
    assert all(task.ready_seen is not None for task in tasks)
    learnt = provider.latencies.learnt(latency_kind(EditRequest(model=MODEL, prompt="", seed=1)))
    assert len(learnt.latencies) == min(32, len(tasks))
    return sum(task.polls for task in tasks) / len(tasks)


@pytest.mark.parametrize("progress", [True, False], ids=["progress", "no-progress"])
def test_varying_latencies_cost_at_most_four_polls_a_task(bfl_server: Start,
                                                          progress: bool) -> None:
    server = bfl_server(latency=0.3, progress=progress, faults=FaultConfig(jitter=0.3, seed=4))
    assert chains(server, variants=12, steps=3) <= 4.0


def test_status_phases_are_learnt_and_still_cost_at_most_four_polls(bfl_server: Start) -> None:
    server = bfl_server(latency=0.3, progress=False, phases=True, every_phase=False,
                        faults=FaultConfig(jitter=0.3, seed=5))
    assert chains(server, variants=12, steps=3) <= 4.0
