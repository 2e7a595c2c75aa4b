"""Accepted requests: told before their result is awaited, and collected by a later run
instead of being submitted (and paid for) again."""

from __future__ import annotations

import time

from kontext_pipeline._support.images import inspect_bytes
from kontext_pipeline.providers._base import Accepted, EditRequest, EditResult, ProviderEvent
from kontext_pipeline.providers.bfl import DEFAULT_API_BASE
from kontext_pipeline.server._run import BackgroundServer
from tests.bfl_helpers import KEY, provider_for, run
from tests.conftest import Start

REQUEST = EditRequest("flux-kontext-pro", "Make it blue", 42, label="test/step")


def generate(server: BackgroundServer, *, resume: Accepted | None = None,
             accepted: list[tuple[Accepted, int]] | None = None,
             events: list[ProviderEvent] | None = None) -> EditResult:
    provider = provider_for(server)

    async def remember(answer: Accepted) -> None:
        if accepted is not None:  # with how many polls the server had seen by then
            accepted.append((answer, len(server.state.paths("GET"))))

    async def go() -> EditResult:
        try:
            return await provider.generate(REQUEST, events.append if events is not None
                                           else None, resume=resume, on_accepted=remember)
        finally:
            await provider.aclose()

    return run(go())


def test_an_accepted_request_is_told_before_any_poll(bfl_server: Start) -> None:
    server = bfl_server()
    accepted: list[tuple[Accepted, int]] = []
    before = time.time()
    result = generate(server, accepted=accepted)
    ((answer, polls_then),) = accepted
    assert polls_then == 0
    assert answer.task_id == result.request_id
    assert answer.polling_url == f"{server.url}/eu4/v1/get_result?id={answer.task_id}"
    assert (answer.api_base, answer.cost) == (server.url, 4)
    assert before <= answer.submitted_at <= time.time()


def test_a_task_of_an_earlier_run_is_collected_without_a_submit(bfl_server: Start) -> None:
    server = bfl_server(latency=0.3)
    accepted: list[tuple[Accepted, int]] = []
    first = generate(server, accepted=accepted)
    events: list[ProviderEvent] = []
    again = generate(server, resume=accepted[0][0], events=events)
    assert len(server.state.paths("POST")) == 1
    assert again.image == first.image
    assert again.request_id == first.request_id
    inspect_bytes(again.image)
    assert [(e.kind, e.message) for e in events][:2] == [
        ("queued", None),
        ("submitted", f"collecting task {first.request_id} of an earlier run")]


def test_a_task_the_api_no_longer_knows_is_submitted_again(bfl_server: Start) -> None:
    server = bfl_server()
    lost = Accepted("gone", f"{server.url}/eu4/v1/get_result?id=gone", server.url, 4,
                    time.time() - 3600)
    events: list[ProviderEvent] = []
    result = generate(server, resume=lost, events=events)
    assert len(server.state.paths("POST")) == 1
    assert result.request_id != "gone"
    retries = [e.message for e in events if e.kind == "retrying"]
    assert retries == ["test/step: task gone of an earlier run is no longer known to the API; "
                       "submitting it again"]


def test_a_task_accepted_by_another_api_base_is_submitted_again(bfl_server: Start) -> None:
    server = bfl_server()
    elsewhere = Accepted("t-9", "https://api.eu4.bfl.ai/v1/get_result?id=t-9",
                         DEFAULT_API_BASE, 4, time.time())
    events: list[ProviderEvent] = []
    generate(server, resume=elsewhere, events=events)
    assert server.state.paths()[0] == "/v1/flux-kontext-pro"  # nothing asked about t-9
    assert len(server.state.paths("POST")) == 1
    assert [e.message for e in events if e.kind == "retrying"] == [
        f"test/step: task t-9 of an earlier run was accepted by {DEFAULT_API_BASE}, not "
        f"{server.url}; submitting it again"]


def test_an_old_task_is_still_polled_once_past_the_deadline(bfl_server: Start) -> None:
    server = bfl_server()
    accepted: list[tuple[Accepted, int]] = []
    generate(server, accepted=accepted)
    answer = accepted[0][0]
    old = Accepted(answer.task_id, answer.polling_url, answer.api_base, answer.cost,
                   answer.submitted_at - 7200)  # two hours ago: past the polling deadline
    generate(server, resume=old)
    assert len(server.state.paths("POST")) == 1


def test_a_journalled_polling_url_holding_the_key_is_not_polled(bfl_server: Start) -> None:
    """The journal is input too: a task journalled with the key in its polling URL is not
    polled; the request is submitted again."""
    server = bfl_server()
    encoded = "".join(f"%{ord(c):02X}" for c in KEY)
    journalled = Accepted("t-old", f"{server.url}/v1/get_result?id=t-old&k={encoded}",
                          server.url, 4, time.time())
    events: list[ProviderEvent] = []
    result = generate(server, resume=journalled, events=events)
    assert not [r for r in server.state.requests if "t-old" in r.query]
    assert len(server.state.paths("POST")) == 1
    inspect_bytes(result.image)
    assert [e.message for e in events if e.kind == "retrying"] == [
        "test/step: a task of an earlier run was journalled with the API key in its id or "
        "polling URL; they are not used; submitting it again"]
