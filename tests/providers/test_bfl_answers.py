"""What the 2026 API's poll answers mean, with httpx.MockTransport: in-flight statuses known and
unknown, failure reasons, a 422 that is a task result, and ``Retry-After`` on downloads.

No request leaves the process: the transport answers every one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from kontext_pipeline.errors import AmbiguousSubmitError, RequestRejectedError, TaskFailedError
from kontext_pipeline.providers._base import EditRequest, EditResult, ProviderEvent
from kontext_pipeline.providers._policies import PollPolicy, RetryPolicy
from kontext_pipeline.providers.bfl import DEFAULT_API_BASE, BflProvider
from tests.bfl_helpers import KEY, RecordedSleep, png, run

Answer = httpx.Response
POLLING_URL = f"{DEFAULT_API_BASE}/v1/get_result?id=abc"
DELIVERY = "https://delivery-eu1.bfl.example/results/abc/sample.png?sig=x"
READY = {"id": "abc", "status": "Ready", "result": {"sample": DELIVERY, "seed": 1}}


class Api:
    """Answers a submit with task ``abc``, polls from ``polls`` in turn (the last one again
    and again) and the delivery from ``deliveries`` the same way."""

    def __init__(self, polls: list[Answer], deliveries: list[Answer] | None = None) -> None:
        self.polls = polls
        self.deliveries = deliveries or [httpx.Response(200, content=png())]
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> Answer:
        self.seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"id": "abc", "polling_url": POLLING_URL,
                                             "cost": 4})
        answers = self.polls if "get_result" in request.url.path else self.deliveries
        return answers.pop(0) if len(answers) > 1 else answers[0]


def provider(handler: Callable[[httpx.Request], Answer],
             sleep: RecordedSleep | None = None) -> BflProvider:
    return BflProvider(client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
                       api_key=KEY, retry=RetryPolicy(attempts=3, base_delay=0.001),
                       polling=PollPolicy(first=0.001, max_interval=0.002, deadline=30.0),
                       sleep=sleep or RecordedSleep(cap=0.0))


def generate(bfl: BflProvider, events: list[ProviderEvent], *prompts: str) -> list[EditResult]:
    async def go() -> list[EditResult]:
        try:
            return [await bfl.generate(EditRequest("flux-kontext-pro", prompt, 1, label="t"),
                                       events.append) for prompt in prompts]
        finally:
            await bfl.aclose()

    return run(go())


def status(word: str, progress: float | None = None) -> Answer:
    return httpx.Response(200, json={"id": "abc", "status": word, "progress": progress})


def test_reasoning_generating_and_unknown_statuses_are_in_flight() -> None:
    api = Api([status("Pending", 0.1), status("Reasoning", 0.3), status("Queued for GPU"),
               status("Generating", 0.8), httpx.Response(200, json=READY)])
    events: list[ProviderEvent] = []
    (result,) = generate(provider(api), events, "Make it blue")
    assert result.request_id == "abc"
    assert result.polls == 5
    polling = [e for e in events if e.kind == "polling"]
    assert [e.progress for e in polling] == [0.1, 0.3, None, 0.8]
    assert [e.message for e in events if e.kind == "warning"] == [
        "the API answered status 'Queued for GPU', which this client does not know; the task "
        "is taken to be still in flight until it ends or the 30 s deadline passes"]


def test_an_unknown_status_is_warned_about_once_per_run() -> None:
    def answers() -> Iterator[Answer]:
        while True:
            yield from (status("Warming"), status("Warming"), status("Cooling"),
                        httpx.Response(200, json=READY))

    script = answers()

    def handler(request: httpx.Request) -> Answer:
        if "get_result" in request.url.path:
            return next(script)
        return Api([])(request)

    events: list[ProviderEvent] = []
    generate(provider(handler), events, "one", "two", "three")
    warnings = [e.message or "" for e in events if e.kind == "warning"]
    assert len(warnings) == 2
    assert warnings[0].startswith("the API answered status 'Warming', which")
    assert warnings[1].startswith("the API answered status 'Cooling', which")
    assert sum(1 for e in events if e.kind == "done") == 3


@pytest.mark.parametrize(("body", "shown"), [
    ({"details": {"error": "GPU fell over"}, "result": {"error": "not this one"}},
     " (GPU fell over)"),
    ({"details": {"code": 7}, "result": {"error": "out of memory"}}, " (out of memory)"),
    ({"details": {"code": 7}, "result": None}, ' ({"code": 7})'),
    ({"details": "Task timed out"}, " (Task timed out)"),
    ({"details": None, "result": None}, ""),
])
def test_a_failure_shows_details_error_else_result_error_else_details(
        body: dict[str, Any], shown: str) -> None:
    api = Api([httpx.Response(200, json={"id": "abc", "status": "Failed", **body})])
    with pytest.raises(TaskFailedError) as caught:
        generate(provider(api), [], "Make it blue")
    assert str(caught.value) == ("t: the task ended with status 'Failed' (task abc, prompt: "
                                 f"'Make it blue'){shown}")
    assert caught.value.status == "Failed"


def test_a_poll_answered_422_with_a_task_body_is_that_task_result() -> None:
    api = Api([httpx.Response(422, json={"id": "abc", "status": "Reasoning", "progress": 0.5}),
               httpx.Response(422, json=READY)])
    events: list[ProviderEvent] = []
    (result,) = generate(provider(api), events, "Make it blue")
    assert result.request_id == "abc"
    assert [e.progress for e in events if e.kind == "polling"] == [0.5]
    assert not [e for e in events if e.kind == "retrying"]


def test_a_poll_answered_422_in_fastapi_shape_is_still_a_rejection() -> None:
    api = Api([httpx.Response(422, json={"detail": [{"loc": ["query", "id"],
                                                     "msg": "Field required"}]})])
    with pytest.raises(RequestRejectedError) as caught:
        generate(provider(api), [], "Make it blue")
    assert str(caught.value) == ("t: the API rejected the request (HTTP 422) (query.id: Field "
                                 "required)")


def test_a_poll_answer_without_a_status_is_retried() -> None:
    api = Api([httpx.Response(200, json={"id": "abc"}), httpx.Response(200, json=READY)])
    events: list[ProviderEvent] = []
    generate(provider(api), events, "Make it blue")
    (retry,) = [e.message or "" for e in events if e.kind == "retrying"]
    assert retry.startswith("poll: the answer has no status; retrying in ")


DEEP = "[" * 5000  # 5 KB: json.loads raises RecursionError, not a ValueError, for it


def test_a_poll_answer_nested_too_deeply_is_retried() -> None:
    api = Api([httpx.Response(200, content=DEEP), httpx.Response(200, json=READY)])
    events: list[ProviderEvent] = []
    (result,) = generate(provider(api), events, "Make it blue")
    assert result.request_id == "abc"
    (retry,) = [e.message or "" for e in events if e.kind == "retrying"]
    assert retry.startswith("poll: the answer is not JSON; retrying in ")


def test_a_submit_answer_nested_too_deeply_is_not_retried() -> None:
    seen: list[str] = []

    def submit(request: httpx.Request) -> Answer:
        seen.append(request.method)
        return httpx.Response(200, content=DEEP)

    with pytest.raises(AmbiguousSubmitError) as caught:
        generate(provider(submit), [], "Make it blue")
    assert str(caught.value) == ("t: the API's answer to the submit is not JSON; it may have "
                                 "accepted and billed it, so it is not retried")
    assert seen == ["POST"]


def test_a_refusal_nested_too_deeply_shows_the_start_of_its_body() -> None:
    api = Api([httpx.Response(422, content=DEEP)])  # not a task result: a rejection
    with pytest.raises(RequestRejectedError) as caught:
        generate(provider(api), [], "Make it blue")
    assert str(caught.value) == ("t: the API rejected the request (HTTP 422) (" + "[" * 200
                                 + ")")

    def refuse(request: httpx.Request) -> Answer:
        return httpx.Response(400, content=DEEP)

    with pytest.raises(RequestRejectedError) as caught:
        generate(provider(refuse), [], "Make it blue")
    assert str(caught.value) == ("t: the API rejected the request (HTTP 400) (" + "[" * 200
                                 + ")")

@pytest.mark.parametrize("refusal", [503, 429])
def test_a_download_honours_retry_after(refusal: int) -> None:
    api = Api([httpx.Response(200, json=READY)],
              [httpx.Response(refusal, headers={"Retry-After": "7"}),
               httpx.Response(200, content=png())])
    sleep = RecordedSleep(cap=0.0)
    events: list[ProviderEvent] = []
    generate(provider(api, sleep), events, "Make it blue")
    assert sleep.delays == [7.0]
    (retry,) = [e.message for e in events if e.kind == "retrying"]
    assert retry == f"download: HTTP {refusal}; retrying in 7.0 s"
    downloads = [r for r in api.seen if r.url.host.startswith("delivery")]
    assert len(downloads) == 2
    assert all("x-key" not in r.headers for r in downloads)


def test_an_unknown_status_that_echoes_the_key_is_warned_about_without_it() -> None:
    api = Api([status(f"Thinking about {KEY}"), httpx.Response(200, json=READY)])
    events: list[ProviderEvent] = []
    generate(provider(api), events, "Make it blue")
    (warning,) = [e.message or "" for e in events if e.kind == "warning"]
    assert warning.startswith("the API answered status 'Thinking about [API key]', which ")
    assert not [e for e in events if KEY in repr(e)]


def test_a_submit_refused_with_500_is_sent_again_after_its_retry_after() -> None:
    api = Api([httpx.Response(200, json=READY)])
    refusals = [httpx.Response(500, json={"detail": "Internal Server Error"},
                               headers={"Retry-After": "3"})]

    def handler(request: httpx.Request) -> Answer:
        if request.method == "POST" and refusals:
            api.seen.append(request)
            return refusals.pop()
        return api(request)

    sleep = RecordedSleep(cap=0.0)
    events: list[ProviderEvent] = []
    (result,) = generate(provider(handler, sleep), events, "Make it blue")
    assert result.request_id == "abc"
    assert sleep.delays == [3.0]
    assert [e.message for e in events if e.kind == "retrying"] == [
        "submit: HTTP 500 (Internal Server Error); retrying in 3.0 s"]
    assert [r.method for r in api.seen].count("POST") == 2
