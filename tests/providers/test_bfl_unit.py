"""Single responses, with httpx.MockTransport: hosts the key may go to, odd answers, limits.

No request leaves the process: the transport answers every one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from kontext_pipeline.errors import (
    AmbiguousSubmitError,
    InvalidResultError,
    ProviderError,
    ProviderUnavailableError,
    RequestRejectedError,
)
from kontext_pipeline.providers._base import EditRequest, ProviderEvent
from kontext_pipeline.providers._policies import PollPolicy, RetryPolicy
from kontext_pipeline.providers.bfl import DEFAULT_API_BASE, BflProvider
from kontext_pipeline.providers.bfl._body import request_body
from tests.bfl_helpers import KEY, RecordedSleep, png, run

Handler = Callable[[httpx.Request], httpx.Response]
API_HOST = httpx.URL(DEFAULT_API_BASE).host
CLUSTER_HOST = API_HOST.replace("api.", "api.eu4.", 1)
DELIVERY = "https://delivery-eu1.bfl.example/results/abc/sample.png?sig=x"


def provider(handler: Handler, *, max_result_bytes: int = 10_000_000,
             api_base: str = DEFAULT_API_BASE) -> BflProvider:
    return BflProvider(client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
                       api_key=KEY, api_base=api_base,
                       retry=RetryPolicy(attempts=3, base_delay=0.001),
                       polling=PollPolicy(first=0.001, max_interval=0.002),
                       sleep=RecordedSleep(cap=0.0), max_result_bytes=max_result_bytes)


def generate(handler: Handler, *,
             max_result_bytes: int = 10_000_000) -> tuple[object, list[ProviderEvent]]:
    events: list[ProviderEvent] = []
    bfl = provider(handler, max_result_bytes=max_result_bytes)

    async def go() -> object:
        try:
            return await bfl.generate(EditRequest("flux-kontext-pro", "Make it blue", 1,
                                                  label="t"), events.append)
        finally:
            await bfl.aclose()

    return run(go()), events


class FakeBfl:
    """A scripted API: a submit answer, a list of poll answers, a delivery answer."""

    def __init__(self, *, submit: httpx.Response | Exception | None = None,
                 polls: list[httpx.Response] | None = None,
                 delivery: httpx.Response | None = None) -> None:
        self.submit = submit or httpx.Response(200, json={
            "id": "abc", "polling_url": f"https://{CLUSTER_HOST}/v1/get_result?id=abc",
            "cost": 4})
        self.polls = polls or [
            httpx.Response(200, json={"id": "abc", "status": "Pending", "progress": 0.4}),
            httpx.Response(200, json={"id": "abc", "status": "Ready",
                                      "result": {"sample": DELIVERY, "seed": 1}})]
        self.delivery = delivery or httpx.Response(200, content=png())
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.method == "POST":
            if isinstance(self.submit, Exception):
                raise self.submit
            return self.submit
        if "get_result" in request.url.path:
            return self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        return self.delivery


def test_key_goes_to_api_hosts_only() -> None:
    api = FakeBfl()
    _, events = generate(api)
    hosts = [(r.url.host, r.headers.get("x-key")) for r in api.seen]
    assert hosts == [(API_HOST, KEY), (CLUSTER_HOST, KEY), (CLUSTER_HOST, KEY),
                     ("delivery-eu1.bfl.example", None)]
    assert json.loads(api.seen[0].content)["prompt"] == "Make it blue"
    assert [e.progress for e in events if e.kind == "polling"] == [0.4]


def test_a_polling_url_outside_the_api_domain_gets_no_key() -> None:
    api = FakeBfl(submit=httpx.Response(200, json={
        "id": "abc", "polling_url": "https://collector.example.com/v1/get_result?id=abc"}))
    with pytest.raises(ProviderError) as caught:
        generate(api)
    assert str(caught.value) == ("t: the API gave a polling URL on collector.example.com, "
                                 f"outside {API_HOST}'s domain; the key is not sent there")
    assert len(api.seen) == 1


def test_a_plain_http_polling_url_gets_no_key() -> None:
    api = FakeBfl(submit=httpx.Response(200, json={
        "id": "abc", "polling_url": f"http://{CLUSTER_HOST}/v1/get_result?id=abc"}))
    with pytest.raises(ProviderError, match="the key is not sent there"):
        generate(api)


def test_submit_answer_that_is_not_json_is_ambiguous() -> None:
    api = FakeBfl(submit=httpx.Response(200, text="<html>gateway</html>"))
    with pytest.raises(AmbiguousSubmitError) as caught:
        generate(api)
    assert str(caught.value) == ("t: the API's answer to the submit is not JSON; it may have "
                                 "accepted and billed it, so it is not retried")
    assert len(api.seen) == 1


def test_a_read_timeout_after_sending_is_ambiguous() -> None:
    api = FakeBfl(submit=httpx.ReadTimeout("timed out"))
    with pytest.raises(AmbiguousSubmitError) as caught:
        generate(api)
    assert str(caught.value) == ("t: the submit failed after it was sent (ReadTimeout: timed "
                                 "out); the API may have accepted and billed it, so it is not "
                                 "retried")
    assert len(api.seen) == 1


class CutShort(httpx.AsyncByteStream):
    """An answer whose body stops with a dropped connection."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"id": "ab'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete "
                                        "message body")


def test_an_accepted_submit_whose_answer_is_cut_short_is_not_sent_again() -> None:
    api = FakeBfl(submit=httpx.Response(200, stream=CutShort()))
    with pytest.raises(AmbiguousSubmitError) as caught:
        generate(api)
    assert str(caught.value) == (
        "t: the API accepted the submit (HTTP 200) but the connection dropped before its answer "
        "was complete (RemoteProtocolError: peer closed connection without sending complete "
        "message body); the task id is lost and the API may have billed it, so it is not "
        "retried")
    assert len(api.seen) == 1


def test_a_refusal_whose_body_is_cut_short_still_counts_by_its_status() -> None:
    answers = iter([httpx.Response(503, stream=CutShort()), FakeBfl().submit])
    api = FakeBfl()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return api(request)
        answer = next(answers)
        assert isinstance(answer, httpx.Response)
        return answer

    _, events = generate(handler)
    retries = [e.message or "" for e in events if e.kind == "retrying"]
    assert len(retries) == 1
    assert retries[0].startswith("submit: HTTP 503 (HTTP 503); retrying in ")


def test_a_submit_that_could_not_be_sent_whole_is_sent_again() -> None:
    attempts = iter([httpx.WriteError("broken pipe"), FakeBfl().submit])
    api = FakeBfl()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            answer = next(attempts)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return api(request)

    result, events = generate(handler)
    assert getattr(result, "request_id") == "abc"  # noqa: B009
    assert next(e.message or "" for e in events if e.kind == "retrying").startswith(
        "submit: the connection closed before any answer (WriteError: broken pipe); retrying")


def test_connect_errors_on_submit_are_retried_then_reported() -> None:
    api = FakeBfl(submit=httpx.ConnectError("connection refused"))
    with pytest.raises(ProviderUnavailableError) as caught:
        generate(api)
    assert str(caught.value) == (f"t: the submit failed 3 times; last: cannot connect to "
                                 f"{API_HOST} (ConnectError: connection refused)")
    assert len(api.seen) == 3
    assert caught.value.retryable


def test_string_detail_is_shown() -> None:
    api = FakeBfl(submit=httpx.Response(400, json={"detail": "Prompt too long"}))
    with pytest.raises(RequestRejectedError) as caught:
        generate(api)
    assert str(caught.value) == "t: the API rejected the request (HTTP 400) (Prompt too long)"


def test_a_result_that_is_too_large_is_refused() -> None:
    api = FakeBfl(delivery=httpx.Response(200, content=b"x" * 2000))
    with pytest.raises(InvalidResultError) as caught:
        generate(api, max_result_bytes=1000)
    assert str(caught.value) == "t: the result is 2000 bytes; at most 1000 are accepted"


def test_a_result_that_is_not_an_image_is_retried_then_refused() -> None:
    api = FakeBfl(delivery=httpx.Response(200, content=b"<html>not an image</html>"))
    with pytest.raises(InvalidResultError) as caught:
        generate(api)
    assert str(caught.value) == ("t: the result could not be downloaded: the downloaded result "
                                 "is not an image file that can be decoded (task abc)")
    assert sum(1 for r in api.seen if r.url.host.startswith("delivery")) == 3


def test_ready_without_a_sample_url_is_invalid() -> None:
    api = FakeBfl(polls=[httpx.Response(200, json={"id": "abc", "status": "Ready",
                                                   "result": None})])
    with pytest.raises(InvalidResultError) as caught:
        generate(api)
    assert str(caught.value) == "t: the API said Ready but gave no result URL"


def test_polls_that_are_not_json_are_retried() -> None:
    api = FakeBfl(polls=[httpx.Response(200, text="oops"), httpx.Response(200, text="[1]"),
                         httpx.Response(200, json={"id": "abc", "status": "Ready",
                                                   "result": {"sample": DELIVERY}})])
    result, events = generate(api)
    retries = [e.message for e in events if e.kind == "retrying"]
    assert len(retries) == 2
    assert retries[0] is not None
    assert retries[0].startswith("poll: the answer is not JSON; retrying in ")
    assert getattr(result, "seed") is None  # noqa: B009


def test_the_body_is_encoded_once_and_sends_only_what_is_set() -> None:
    body = json.loads(request_body(EditRequest(
        "flux-kontext-pro", "p", 5, images=(b"ab",))))
    assert body == {"prompt": "p", "seed": 5, "output_format": "png", "safety_tolerance": 2,
                    "prompt_upsampling": False, "input_image": "YWI="}


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ProviderError, match="no API key: set BFL_API_KEY"):
        BflProvider(client=httpx.AsyncClient(), api_key="")


def test_an_input_that_vanished_fails_the_step_cleanly(tmp_path: Path) -> None:
    api = FakeBfl()
    bfl = provider(api)
    missing = tmp_path / "gone.png"

    async def go() -> object:
        try:
            return await bfl.generate(EditRequest("flux-kontext-pro", "p", 1, images=(missing,),
                                                  label="t"))
        finally:
            await bfl.aclose()

    with pytest.raises(ProviderError) as caught:
        run(go())
    assert str(caught.value) == ("t: cannot read an input image (No such file or directory: "
                                 f"{missing})")
    assert not caught.value.stops_run
    assert api.seen == []


def test_an_input_that_changed_since_the_plan_is_not_submitted(tmp_path: Path) -> None:
    api = FakeBfl()
    bfl = provider(api)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"edited since")
    planned = hashlib.sha256(b"as planned").hexdigest()
    actual = hashlib.sha256(b"edited since").hexdigest()

    async def go() -> object:
        try:
            return await bfl.generate(EditRequest("flux-kontext-pro", "p", 1, images=(photo,),
                                                  image_sha256=(planned,), label="t"))
        finally:
            await bfl.aclose()

    with pytest.raises(ProviderError) as caught:
        run(go())
    assert str(caught.value) == (
        f"t: input image 1 is not the one planned (sha256 {actual[:12]}, expected "
        f"{planned[:12]}): it changed on disk, or its cache object is damaged; nothing was "
        "submitted")
    assert api.seen == []


def test_a_polling_url_that_is_not_a_url_is_refused() -> None:
    api = FakeBfl(submit=httpx.Response(200, json={"id": "abc", "polling_url": "https://[::1"}))
    with pytest.raises(ProviderError) as caught:
        generate(api)
    assert str(caught.value).startswith("t: the API gave a polling URL that is not a valid URL (")
    assert len(api.seen) == 1


def test_a_polling_url_on_another_port_of_a_private_host_gets_no_key() -> None:
    api = FakeBfl(submit=httpx.Response(200, json={
        "id": "abc", "polling_url": "https://gateway.example.com:8443/v1/get_result?id=abc"}))
    bfl = provider(api, api_base="https://gateway.example.com")

    async def go() -> object:
        try:
            return await bfl.generate(EditRequest("flux-kontext-pro", "p", 1, label="t"))
        finally:
            await bfl.aclose()

    with pytest.raises(ProviderError) as caught:
        run(go())
    assert str(caught.value) == ("t: the API gave a polling URL on gateway.example.com:8443, "
                                 "outside gateway.example.com's domain; the key is not sent "
                                 "there")
    assert len(api.seen) == 1
