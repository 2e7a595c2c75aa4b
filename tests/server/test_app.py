"""The BFL-compatible server, in-process: endpoints, auth, validation, limits, signed URLs."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import pytest

from kontext_pipeline.server import FaultConfig, ServerConfig, ServerState, create_app
from tests.bfl_helpers import png, run

KEY = {"x-key": "bfl_anything"}
BASE = "http://testserver"


def call(state: ServerState, *requests: tuple[str, str, dict[str, Any] | None],
         key: dict[str, str] | None = None, pause: float = 0.0) -> list[httpx.Response]:
    """Send requests in order to a fresh app over ``state``; returns the responses."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            answers = []
            for method, path, body in requests:
                answers.append(await client.request(method, path, json=body,
                                                    headers=KEY if key is None else key))
                await asyncio.sleep(pause)
            return answers

    return run(go())


def submit_and_poll(config: ServerConfig, body: dict[str, Any], *, wait: float = 0.05,
                    model: str = "flux-kontext-pro") -> tuple[ServerState, dict[str, Any]]:
    state = ServerState(config)

    async def go() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            answer = (await client.post(f"/v1/{model}", json=body, headers=KEY)).json()
            await asyncio.sleep(wait)
            result: dict[str, Any] = (await client.get(answer["polling_url"],
                                                       headers=KEY)).json()
            return result

    return state, run(go())


def test_submit_answers_like_bfl() -> None:
    state = ServerState(ServerConfig(latency=10))
    (answer,) = call(state, ("POST", "/v1/flux-kontext-max",
                             {"prompt": "x", "input_image": base64.b64encode(png()).decode()}))
    body = answer.json()
    assert answer.status_code == 200
    assert set(body) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert body["cost"] == 8
    assert body["polling_url"] == f"{BASE}/eu4/v1/get_result?id={body['id']}"
    assert state.tasks[body["id"]].model == "flux-kontext-max"


def test_poll_pending_then_ready_with_progress_and_a_signed_url() -> None:
    state = ServerState(ServerConfig(latency=2.0))  # the first poll is sooner, however busy
    submit, pending = call(state, ("POST", "/v1/flux-kontext-pro", {"prompt": "x", "seed": 9}),
                           ("GET", "/v1/get_result?id=PLACEHOLDER", None))
    task_id = submit.json()["id"]
    assert pending.json()["status"] == "Task not found"
    first, later = call(state, ("GET", f"/eu4/v1/get_result?id={task_id}", None),
                        ("GET", f"/v1/get_result?id={task_id}", None), pause=2.05)
    assert first.json()["status"] == "Pending"
    assert 0.0 <= first.json()["progress"] < 1.0
    ready = later.json()
    assert ready["status"] == "Ready"
    assert ready["result"]["seed"] == 9
    assert ready["result"]["sample"].startswith(f"{BASE}/delivery/{task_id}/sample.png?se=")
    assert state.credits_charged == 4


@pytest.mark.parametrize(("headers", "status", "detail"), [
    ({}, 401, "Not authenticated: send your API key in the x-key header"),
    ({"x-key": "bfl_wrong"}, 403, "Invalid API key"),
])
def test_auth(headers: dict[str, str], status: int, detail: str) -> None:
    state = ServerState(ServerConfig(api_keys=frozenset({"bfl_right"})))
    submit, poll = call(state, ("POST", "/v1/flux-kontext-pro", {"prompt": "x"}),
                        ("GET", "/v1/get_result?id=x", None), key=headers)
    assert (submit.status_code, submit.json()) == (status, {"detail": detail})
    assert poll.status_code == status
    assert state.tasks == {}


def test_out_of_credits_key() -> None:
    (answer,) = call(ServerState(ServerConfig()), ("POST", "/v1/flux-kontext-pro",
                                                   {"prompt": "x"}),
                     key={"x-key": "bfl_no_credits"})
    assert (answer.status_code, answer.json()) == (402, {"detail": "Insufficient credits"})


def test_validation_errors_in_fastapi_shape() -> None:
    (answer,) = call(ServerState(ServerConfig()), ("POST", "/v1/flux-kontext-pro", {
        "seed": "x", "output_format": "gif", "aspect_ratio": "1:9", "safety_tolerance": 7,
        "prompt_upsampling": "yes", "input_image": "not base64!"}))
    assert answer.status_code == 422
    assert [(e["loc"], e["type"]) for e in answer.json()["detail"]] == [
        (["body", "prompt"], "missing"),
        (["body", "seed"], "int_type"),
        (["body", "aspect_ratio"], "value_error"),
        (["body", "output_format"], "enum"),
        (["body", "safety_tolerance"], "less_than_equal"),
        (["body", "prompt_upsampling"], "bool_type"),
        (["body", "input_image"], "value_error"),
    ]


def test_invalid_json_is_422() -> None:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(ServerConfig()))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await client.post("/v1/flux-kontext-pro", content=b"{nope", headers=KEY)

    answer = run(go())
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["type"] == "json_invalid"


def test_active_limits_answer_429() -> None:
    state = ServerState(ServerConfig(latency=30, active_limit=3, retry_after=2))
    answers = call(state, *[("POST", "/v1/flux-kontext-max", {"prompt": str(i)})
                            for i in range(7)])
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429, 429]
    assert answers[3].json() == {"detail": "Too many active tasks (limit 3)"}
    assert answers[3].headers["retry-after"] == "2"
    max_state = ServerState(ServerConfig(latency=30))
    answers = call(max_state, *[("POST", "/v1/flux-kontext-max", {"prompt": str(i)})
                                for i in range(7)])
    assert [a.status_code for a in answers][-1] == 429
    assert answers[-1].json() == {"detail": "Too many active tasks of flux-kontext-max "
                                            "(limit 6)"}
    assert max_state.peak_by_model["flux-kontext-max"] == 6


def test_request_moderated_is_immediate_and_free() -> None:
    state, result = submit_and_poll(ServerConfig(latency=10),
                                    {"prompt": "bad [[request-moderated]]"}, wait=0)
    assert result["status"] == "Request Moderated"
    assert result["details"] == {"Moderation Reasons": ["Derivative Works Filter"]}
    assert state.active(time.monotonic()) == 0
    assert state.credits_charged == 0


def test_delivery_refuses_a_tampered_or_expired_signature() -> None:
    async def fetch(target: str, state: ServerState) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(state=state))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            return await client.get(target)

    state, ready = submit_and_poll(ServerConfig(latency=0), {"prompt": "x"})
    url = httpx.URL(ready["result"]["sample"])
    good = run(fetch(str(url), state))
    assert good.status_code == 200
    assert good.headers["content-type"] == "image/png"
    tampered = run(fetch(str(url.copy_set_param("sig", "0" * 64)), state))
    assert tampered.status_code == 403
    assert "<Code>AuthenticationFailed</Code>" in tampered.text
    expired_state, expired_ready = submit_and_poll(ServerConfig(latency=0, url_ttl=-1),
                                                   {"prompt": "x"})
    expired = run(fetch(expired_ready["result"]["sample"], expired_state))
    assert expired.status_code == 403
    assert "Signed expiry time has passed" in expired.text


def test_seedless_submits_get_a_seed_and_echo_it() -> None:
    _, ready = submit_and_poll(ServerConfig(latency=0), {"prompt": "x"})
    assert isinstance(ready["result"]["seed"], int)


def test_scripted_faults_come_in_order() -> None:
    state = ServerState(ServerConfig(latency=0))
    state.script("submit", "503", "429-bare")
    answers = call(state, *[("POST", "/v1/flux-kontext-pro", {"prompt": "x"})] * 3)
    assert [a.status_code for a in answers] == [503, 429, 200]
    assert "retry-after" not in answers[1].headers
    with pytest.raises(ValueError, match="unknown endpoint 'upload'"):
        state.script("upload", "500")


def test_random_faults_are_reproducible_from_the_seed() -> None:
    def statuses() -> list[int]:
        state = ServerState(ServerConfig(latency=0, faults=FaultConfig(error_rate=0.3,
                                                                       throttle_rate=0.2,
                                                                       seed=7)))
        return [a.status_code for a in call(state, *[("POST", "/v1/flux-kontext-pro",
                                                      {"prompt": "x"})] * 30)]

    first = statuses()
    assert first == statuses()
    assert {200, 429} <= set(first)
    assert set(first) & {502, 503}


def test_request_log_records_paths_keys_and_bodies() -> None:
    state = ServerState(ServerConfig(latency=0))
    call(state, ("POST", "/v1/flux-kontext-pro", {"prompt": "x", "seed": 1}))
    (record,) = state.requests
    assert (record.method, record.path, record.key, record.status) == (
        "POST", "/v1/flux-kontext-pro", "bfl_anything", 200)
    assert record.body == {"prompt": "x", "seed": 1}


def poll_statuses(config: ServerConfig, polls: int, pause: float = 0.0) -> list[dict[str, Any]]:
    """Submit one task, then poll it ``polls`` times, ``pause`` seconds apart."""
    state = ServerState(config)
    (submit,) = call(state, ("POST", "/v1/flux-kontext-pro", {"prompt": "x", "seed": 2}))
    answers = call(state, *[("GET", f"/eu4/v1/get_result?id={submit.json()['id']}", None)]
                   * polls, pause=pause)
    return [a.json() for a in answers]


def test_phases_each_answer_a_poll_in_turn_however_late_it_comes() -> None:
    config = ServerConfig(latency=0, phases=True, unknown_status="Queued")
    answers = poll_statuses(config, 6)
    assert [a["status"] for a in answers] == [
        "Pending", "Reasoning", "Queued", "Generating", "Ready", "Ready"]
    assert all(a["result"] is None and a["details"] is None and a["progress"] is not None
               for a in answers[:4])


def test_phases_follow_the_time_when_polls_may_skip_them() -> None:
    skipping = ServerConfig(latency=0, phases=True, every_phase=False)
    assert [a["status"] for a in poll_statuses(skipping, 2)] == ["Ready", "Ready"]
    slow = ServerConfig(latency=1000, phases=True, every_phase=False)
    (answer,) = poll_statuses(slow, 1)
    assert answer["status"] == "Pending"
    assert 0 <= answer["progress"] < 0.1


def test_without_phases_a_task_is_pending_then_ready() -> None:
    assert [a["status"] for a in poll_statuses(ServerConfig(latency=0), 2)] == ["Ready"] * 2
    only_unknown = ServerConfig(latency=0, unknown_status="Warming up")
    assert [a["status"] for a in poll_statuses(only_unknown, 3)] == [
        "Pending", "Warming up", "Ready"]


def test_a_ready_answer_keeps_its_epoch_times() -> None:
    before = time.time()
    first, later = poll_statuses(ServerConfig(latency=0.05), 2, pause=0.1)
    assert later["status"] == "Ready"
    times = {k: later["result"][k] for k in ("start_time", "end_time", "duration")}
    if first["status"] == "Ready":
        assert {k: first["result"][k] for k in times} == times
    assert before <= times["start_time"] <= time.time()
    assert times["end_time"] == pytest.approx(times["start_time"] + 0.05)
    assert times["duration"] == 0.05
    again = poll_statuses(ServerConfig(latency=0), 3, pause=0.05)
    assert len({(a["result"]["end_time"], a["result"]["duration"]) for a in again}) == 1


def test_submit_errors_refuse_submits_with_every_5xx_and_accept_none_of_them() -> None:
    state = ServerState(ServerConfig(latency=0, faults=FaultConfig(submit_error_rate=0.5,
                                                                   seed=3)))
    answers = call(state, *[("POST", "/v1/flux-kontext-pro", {"prompt": "x"})] * 40)
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 500, 502, 503, 504}
    assert len(state.tasks) == statuses.count(200)
    (stats,) = call(state, ("GET", "/_stats", None))
    assert stats.json()["submits_received"] == 40
    assert stats.json()["submits"] == statuses.count(200)
