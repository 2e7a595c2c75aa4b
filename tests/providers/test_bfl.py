"""The bfl provider against the bundled server on a real loopback socket.

Each test asserts what the server saw (requests, headers, bodies, paths polled) as well as what
the client returned.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from kontext_pipeline._support.images import inspect_bytes
from kontext_pipeline.errors import (
    AmbiguousSubmitError,
    AuthenticationError,
    InvalidResultError,
    ModerationError,
    OutOfCreditsError,
    ProviderTimeoutError,
    RequestRejectedError,
    TaskFailedError,
)
from kontext_pipeline.providers._base import EditRequest, ProviderEvent
from kontext_pipeline.providers._policies import PollPolicy
from kontext_pipeline.providers.bfl._provider import latency_kind
from tests.bfl_helpers import KEY, RecordedSleep, generate, png, provider_for, run
from tests.conftest import Start


def b64_digest(data: bytes) -> str:
    return hashlib.sha256(base64.b64encode(data)).hexdigest()


def request(prompt: str = "Make it blue", *images: bytes, **params: object) -> EditRequest:
    return EditRequest(model=str(params.pop("model", "flux-kontext-pro")), prompt=prompt,
                       seed=int(str(params.pop("seed", 42))), images=images, label="test/step",
                       **params)  # type: ignore[arg-type]


def test_text_to_image(bfl_server: Start) -> None:
    server = bfl_server()
    events: list[ProviderEvent] = []
    result = run(generate(provider_for(server), request("A red apple on a table"), events))
    assert inspect_bytes(result.image).format == "PNG"
    assert (result.width, result.height) == (1024, 1024)
    assert result.seed == 42
    assert result.cost == 4
    assert result.polls >= 1
    submit, *polls, download = server.state.requests
    assert (submit.method, submit.path, submit.status) == ("POST", "/v1/flux-kontext-pro", 200)
    assert submit.body == {"prompt": "A red apple on a table", "seed": 42, "output_format": "png",
                           "safety_tolerance": 2, "prompt_upsampling": False}
    assert {p.path for p in polls} == {"/eu4/v1/get_result"}
    assert download.path.startswith("/delivery/")
    assert download.status == 200
    assert [e.kind for e in events][:2] == ["queued", "submitted"]
    assert [e.kind for e in events][-2:] == ["downloading", "done"]


def test_edit_with_an_input_image_and_parameters(bfl_server: Start) -> None:
    server = bfl_server()
    photo = png()
    result = run(generate(provider_for(server), request(
        "Make it teal", photo, model="flux-kontext-max", aspect_ratio="16:9",
        output_format="jpeg", safety_tolerance=1)))
    assert inspect_bytes(result.image).format == "JPEG"
    assert (result.width, result.height) == (1392, 752)
    assert result.cost == 8
    submit = server.state.requests[0]
    assert submit.path == "/v1/flux-kontext-max"
    assert submit.body == {"prompt": "Make it teal", "seed": 42, "output_format": "jpeg",
                           "safety_tolerance": 1, "prompt_upsampling": False,
                           "aspect_ratio": "16:9", "input_image": b64_digest(photo)}


def test_multi_reference(bfl_server: Start) -> None:
    server = bfl_server()
    images = [png((i * 60, 20, 20)) for i in range(1, 5)]
    run(generate(provider_for(server), request("Combine them", *images)))
    body = server.state.requests[0].body
    assert body is not None
    assert [body[f] for f in ("input_image", "input_image_2", "input_image_3",
                              "input_image_4")] == [b64_digest(i) for i in images]


def test_results_are_deterministic(bfl_server: Start) -> None:
    server = bfl_server()
    first = run(generate(provider_for(server), request("Make it blue", png())))
    second = run(generate(provider_for(server), request("Make it blue", png())))
    other = run(generate(provider_for(server), request("Make it blue", png(), seed=43)))
    assert first.image == second.image
    assert first.image != other.image


def test_polls_use_the_returned_polling_url_and_the_key_never_reaches_delivery(
    bfl_server: Start,
) -> None:
    server = bfl_server()
    run(generate(provider_for(server), request("Make it blue", png())))
    paths = server.state.paths("GET")
    assert "/v1/get_result" not in paths
    assert paths[:-1] == ["/eu4/v1/get_result"] * (len(paths) - 1)
    for record in server.state.requests:
        expected = None if record.path.startswith("/delivery/") else KEY
        assert record.key == expected, record.path


def test_legacy_get_result_when_no_polling_url_is_returned(bfl_server: Start) -> None:
    server = bfl_server(return_polling_url=False)
    run(generate(provider_for(server), request()))
    polls = [r for r in server.state.requests if r.path.endswith("get_result")]
    assert polls
    assert {r.path for r in polls} == {"/v1/get_result"}
    assert all(r.query.startswith("id=") for r in polls)


@pytest.mark.parametrize(("trigger", "error", "status"), [
    ("[[request-moderated]]", ModerationError, "Request Moderated"),
    ("[[content-moderated]]", ModerationError, "Content Moderated"),
    ("[[error]]", TaskFailedError, "Error"),
    ("[[task-not-found]]", TaskFailedError, "Task not found"),
    ("[[status:Failed]]", TaskFailedError, "Failed"),
])
def test_terminal_statuses_fail_without_retry(
    trigger: str, error: type[Exception], status: str, bfl_server: Start
) -> None:
    server = bfl_server()
    with pytest.raises(error) as caught:
        run(generate(provider_for(server), request(f"Make it blue {trigger}")))
    assert getattr(caught.value, "status") == status  # noqa: B009
    assert str(caught.value).startswith(f"test/step: {status}" if "Moderated" in status
                                        else f"test/step: the task ended with status '{status}'")
    assert f"'Make it blue {trigger}'" in str(caught.value)
    assert server.state.paths("POST") == ["/v1/flux-kontext-pro"]
    assert not any(p.startswith("/delivery/") for p in server.state.paths())
    if "Moderated" in status:
        assert str(caught.value).endswith(
            'not retried, not charged ({"Moderation Reasons": ["Derivative Works Filter"]})')
        assert server.state.credits_charged == 0


def test_missing_and_invalid_keys_stop_at_once(bfl_server: Start) -> None:
    server = bfl_server(api_keys=frozenset({KEY}))
    with pytest.raises(AuthenticationError) as caught:
        run(generate(provider_for(server, key="bfl_wrong_secret_value"), request()))
    assert str(caught.value) == ("the API refused the key (HTTP 403) on submit: check "
                                 "BFL_API_KEY (Invalid API key)")
    assert caught.value.stops_run
    assert "bfl_wrong_secret_value" not in str(caught.value)
    assert len(server.state.requests) == 1


def test_out_of_credits(bfl_server: Start) -> None:
    server = bfl_server()
    with pytest.raises(OutOfCreditsError) as caught:
        run(generate(provider_for(server, key="bfl_no_credits"), request()))
    assert str(caught.value) == ("the BFL account is out of credits (HTTP 402): add credits, "
                                 "then run again; finished steps stay cached")
    assert caught.value.stops_run
    assert len(server.state.requests) == 1


def test_422_shows_loc_and_msg(bfl_server: Start) -> None:
    server = bfl_server()
    with pytest.raises(RequestRejectedError) as caught:
        run(generate(provider_for(server), request(aspect_ratio="30:9", safety_tolerance=9)))
    assert str(caught.value) == (
        "test/step: the API rejected the request (HTTP 422) (aspect_ratio: Value error, aspect "
        "ratio must be between 21:9 and 9:21; safety_tolerance: Input should be an integer "
        "from 0 to 6)")
    assert len(server.state.requests) == 1


def test_429_honours_retry_after(bfl_server: Start) -> None:
    server = bfl_server(retry_after=3)
    server.state.script("submit", "429")
    sleep = RecordedSleep()
    run(generate(provider_for(server, sleep=sleep), request()))
    assert sleep.delays[0] == 3.0
    assert [r.status for r in server.state.requests if r.method == "POST"] == [429, 200]


def test_429_without_retry_after_backs_off_with_jitter(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("submit", "429-bare", "429-bare")
    sleep = RecordedSleep()
    run(generate(provider_for(server, sleep=sleep), request()))
    first, second = sleep.delays[:2]
    assert 0.005 <= first <= 0.01  # attempt 1: half to all of base_delay (0.01)
    assert 0.01 <= second <= 0.02  # attempt 2: doubled
    assert [r.status for r in server.state.requests if r.method == "POST"] == [429, 429, 200]


def test_429_lowers_the_effective_concurrency(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("submit", "429")
    provider = provider_for(server, recovery=60.0)
    run(generate(provider, request()))
    assert provider.limiter.limit == 1  # one was active when the 429 came


def test_5xx_on_submit_is_retried_and_an_unexpected_answer_is_not(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("submit", "500", "502", "503", "504")
    run(generate(provider_for(server), request()))
    assert [r.status for r in server.state.requests if r.method == "POST"] == [
        500, 502, 503, 504, 200]
    assert sum(server.state.submits.values()) == 1

    server.state.script("submit", "409")  # says nothing of whether the API took it
    with pytest.raises(AmbiguousSubmitError) as caught:
        run(generate(provider_for(server), request()))
    assert str(caught.value) == (
        "test/step: the API answered the submit with HTTP 409; it may have accepted and billed "
        "it, so it is not retried (Internal server error)")
    assert [r.status for r in server.state.requests if r.method == "POST"][-1:] == [409]
    assert len(server.state.paths("POST")) == 6


def test_5xx_and_429_on_poll_are_retried(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("poll", "500", "502", "429", "503")
    result = run(generate(provider_for(server), request()))
    statuses = [r.status for r in server.state.requests if r.path.endswith("get_result")]
    assert statuses[:4] == [500, 502, 429, 503]
    assert statuses[-1] == 200
    assert result.polls == len(statuses)
    assert len(server.state.paths("POST")) == 1


def test_a_dropped_connection_on_poll_is_retried(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("poll", "drop")
    run(generate(provider_for(server), request()))
    assert len(server.state.paths("POST")) == 1


def test_a_submit_dropped_before_any_answer_is_sent_again(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("submit", "drop")
    events: list[ProviderEvent] = []
    run(generate(provider_for(server), request(), events))
    assert [r.status for r in server.state.requests if r.method == "POST"] == [0, 200]
    assert sum(server.state.submits.values()) == 1  # accepted once
    (retry,) = [e.message for e in events if e.kind == "retrying"]
    assert retry is not None
    assert retry.startswith("submit: the connection closed before any answer "
                            "(RemoteProtocolError: Server disconnected without sending a "
                            "response.); retrying in ")


def test_a_truncated_download_is_fetched_again(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("download", "truncate")
    result = run(generate(provider_for(server), request("Make it blue", png())))
    inspect_bytes(result.image)
    downloads = [r for r in server.state.requests if r.path.startswith("/delivery/")]
    assert [d.status for d in downloads] == [200, 200]  # the first was cut short


def test_an_expired_result_url_is_renewed_by_polling_again(bfl_server: Start) -> None:
    server = bfl_server()
    server.state.script("download", "expire")
    run(generate(provider_for(server), request()))
    tail = [(r.path.split("/")[1], r.status) for r in server.state.requests[-3:]]
    assert tail == [("delivery", 403), ("eu4", 200), ("delivery", 200)]


def test_a_result_url_that_stays_expired_fails_the_step(bfl_server: Start) -> None:
    server = bfl_server(url_ttl=-5)
    with pytest.raises(InvalidResultError) as caught:
        run(generate(provider_for(server, attempts=3), request()))
    assert str(caught.value).startswith("test/step: the result URL answered HTTP 403 (task ")
    downloads = [r for r in server.state.requests if r.path.startswith("/delivery/")]
    assert [d.status for d in downloads] == [403, 403]


def test_a_task_that_never_finishes_hits_the_deadline(bfl_server: Start) -> None:
    server = bfl_server()
    with pytest.raises(ProviderTimeoutError) as caught:
        run(generate(provider_for(server, deadline=1.0), request("Forever [[never]]")))
    assert str(caught.value).startswith("test/step: no result after 1 s (task ")
    assert str(caught.value).endswith("it was not submitted again")
    assert len(server.state.paths("POST")) == 1
    assert len(server.state.paths("GET")) >= 2  # it kept polling (how often: up to the load)


def test_thirty_tasks_never_exceed_twenty_four_active(bfl_server: Start) -> None:
    server = bfl_server(latency=0.6)
    provider = provider_for(server)

    async def many() -> None:
        try:
            await asyncio.gather(*(provider.generate(request(f"Task {i}")) for i in range(30)))
        finally:
            await provider.aclose()

    run(many())
    # bounds only: how many of the server's tasks overlap depends on how fast a loaded machine
    # submits them, against their 0.6 s latency
    assert 1 < server.state.peak_active <= 24
    assert provider.limiter.peak <= 24
    assert sorted(server.state.submits.values()) == [1] * 30  # every task, submitted once
    assert all(r.status == 200 for r in server.state.requests)  # no 429: never over the limit


def test_kontext_max_is_limited_to_six(bfl_server: Start) -> None:
    server = bfl_server(latency=0.4)
    provider = provider_for(server)

    async def many() -> None:
        try:
            await asyncio.gather(*(provider.generate(request(f"Max {i}", model="flux-kontext-max"))
                                   for i in range(10)),
                                 *(provider.generate(request(f"Pro {i}")) for i in range(10)))
        finally:
            await provider.aclose()

    run(many())
    assert 1 < server.state.peak_by_model["flux-kontext-max"] <= 6  # a bound, not a race
    assert server.state.peak_active <= 24
    assert all(r.status == 200 for r in server.state.requests)


def test_the_key_appears_in_no_message_or_event(bfl_server: Start) -> None:
    server = bfl_server(api_keys=frozenset({"bfl_other"}))
    events: list[ProviderEvent] = []
    provider = provider_for(server)
    assert KEY not in repr(provider)
    with pytest.raises(AuthenticationError) as caught:
        run(generate(provider, request(), events))
    texts = [str(caught.value), repr(caught.value), *map(repr, events)]
    assert not [t for t in texts if KEY in t]


def test_waves_of_tasks_poll_at_most_four_times_each_on_average(bfl_server: Start) -> None:
    server = bfl_server(latency=0.5)
    provider = provider_for(server)
    provider.polling = PollPolicy()  # the real cadence: first poll at 0.5 s, then learnt

    async def waves() -> None:
        try:
            await asyncio.gather(*(provider.generate(request(f"Task {i}")) for i in range(72)))
        finally:
            await provider.aclose()

    run(waves())
    polls = len([p for p in server.state.paths("GET") if p.endswith("/get_result")])
    assert len(server.state.paths("POST")) == 72
    # one to read the progress, one at the end of its estimate, now and then one to sharpen
    # it or one more when a busy machine made the estimate a hair early: 4 at most (the limit)
    assert polls / 72 <= 4.0
    assert provider.latencies.learnt(latency_kind(request("Task 0"))).median is not None
