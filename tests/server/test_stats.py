"""The latency spread (``--jitter``) and what ``GET /_stats`` tells per task: the benchmarks
set two clients side by side on servers started alike, and read start, finish and polls from
these figures."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from kontext_pipeline.server import FaultConfig, ServerConfig, ServerState
from kontext_pipeline.server._run import BackgroundServer
from kontext_pipeline.server._state import task_latency
from tests.server.test_app import call
from tests.server.test_serve import serving

KEY = {"x-key": "bfl_stats"}
PROMPTS = [f"Step {k} of picture {n}" for n in range(8) for k in range(3)]


def submit_all(state: ServerState, prompts: list[str],
               model: str = "flux-kontext-pro") -> dict[str, float]:
    """Submit ``prompts`` in order; each prompt's latency as the server drew it."""
    answers = call(state, *[("POST", f"/v1/{model}", {"prompt": p}) for p in prompts])
    assert [a.status_code for a in answers] == [200] * len(prompts)
    return {state.tasks[a.json()["id"]].prompt: state.tasks[a.json()["id"]].latency
            for a in answers}


def jittered(seed: int = 0, latency: float = 2.0, jitter: float = 1.0) -> ServerState:
    return ServerState(ServerConfig(latency=latency, active_limit=100,
                                    faults=FaultConfig(jitter=jitter, seed=seed)))


def test_a_latency_is_drawn_from_latency_to_latency_plus_jitter() -> None:
    latencies = submit_all(jittered(), PROMPTS)
    assert all(2.0 <= value <= 3.0 for value in latencies.values())
    assert len(set(latencies.values())) == len(PROMPTS)  # spread, not one value
    assert max(latencies.values()) - min(latencies.values()) > 0.5
    assert latencies["Step 0 of picture 0"] == 2.3887060530767092  # stable across versions


def test_a_prompt_of_a_model_meets_the_same_latency_whatever_the_order() -> None:
    forward = submit_all(jittered(), PROMPTS)
    backward = submit_all(jittered(), PROMPTS[::-1])
    assert backward == forward
    other_seed = submit_all(jittered(seed=1), PROMPTS)
    assert sum(other_seed[p] != forward[p] for p in PROMPTS) >= len(PROMPTS) - 1
    max_model = submit_all(jittered(), PROMPTS[:6], model="flux-kontext-max")
    assert sum(max_model[p] != forward[p] for p in PROMPTS[:6]) >= 5
    config = jittered().config
    assert [task_latency(config, "flux-kontext-pro", p) for p in PROMPTS] == [
        forward[p] for p in PROMPTS]


def test_without_jitter_every_task_takes_the_latency() -> None:
    assert set(submit_all(jittered(latency=0.7, jitter=0), PROMPTS).values()) == {0.7}


def test_a_task_is_in_flight_for_its_drawn_latency() -> None:
    state = jittered(latency=0.0, jitter=0.3, seed=4)
    submit, poll = call(state, ("POST", "/v1/flux-kontext-pro", {"prompt": "a cat"}),
                        ("GET", "/_stats", None), pause=0.35)
    drawn = poll.json()["tasks"][0]["latency"]
    assert 0.0 < drawn <= 0.3
    task = state.tasks[submit.json()["id"]]
    assert task.ready_at - task.created == pytest.approx(drawn, abs=1e-9)
    (ready,) = call(state, ("GET", f"/v1/get_result?id={task.id}", None))
    assert ready.json()["status"] == "Ready"
    assert ready.json()["result"]["duration"] == round(drawn, 3)


def stats(base: str) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{base}/_stats", headers=KEY, timeout=10).json()
    return data


def test_stats_before_any_submit_have_no_tasks_and_no_times() -> None:
    (answer,) = call(ServerState(ServerConfig()), ("GET", "/_stats", None))
    body = answer.json()
    assert (body["tasks"], body["first_submit"], body["last_download"]) == ([], None, None)
    assert set(body) == {"submits", "submits_received", "repeated_submits", "polls",
                         "downloads", "peak_active", "peak_by_model", "active",
                         "credits_charged", "first_submit", "last_download", "tasks"}


def test_stats_tell_each_task_in_submit_order_with_its_polls_and_times() -> None:
    with BackgroundServer(ServerConfig(latency=0.2)) as server, httpx.Client(
            headers=KEY, timeout=10) as client:
        before = time.time()
        first = client.post(f"{server.url}/v1/flux-kontext-pro", json={"prompt": "first"}).json()
        between = time.time()
        second = client.post(f"{server.url}/v1/flux-kontext-max", json={"prompt": "second"})
        assert client.get(first["polling_url"]).json()["status"] == "Pending"
        server.state.script("poll", "503")  # refused: no answer about the task
        assert client.get(first["polling_url"]).status_code == 503
        time.sleep(0.25)
        assert client.get(f"{server.url}/v1/get_result?id=unknown").json()["status"] == (
            "Task not found")
        polled = time.time()
        ready = client.get(first["polling_url"]).json()
        answered = time.time()
        assert ready["status"] == "Ready"
        assert client.get(first["polling_url"]).json()["status"] == "Ready"
        after_polls = stats(server.url)
        assert after_polls["last_download"] is None
        downloaded = client.get(ready["result"]["sample"])
        assert downloaded.status_code == 200
        body = stats(server.url)
        done = time.time()
    one, two = body["tasks"]
    assert (one["id"], one["model"], one["prompt"]) == (first["id"], "flux-kontext-pro", "first")
    assert (two["id"], two["model"], two["prompt"]) == (second.json()["id"],
                                                        "flux-kontext-max", "second")
    assert (one["latency"], two["latency"]) == (0.2, 0.2)
    assert (one["polls"], two["polls"]) == (3, 0)  # the refused and the unknown one not counted
    assert body["polls"] == 5
    assert before <= one["submitted"] <= between <= two["submitted"]
    assert before <= body["first_submit"] <= one["submitted"]  # as it reached the server
    assert polled <= one["ready_seen"] <= answered
    assert two["ready_seen"] is None
    assert done >= body["last_download"] >= answered


def test_a_cut_download_is_not_a_finished_one() -> None:
    with BackgroundServer(ServerConfig(latency=0)) as server, httpx.Client(
            headers=KEY, timeout=10) as client:
        task = client.post(f"{server.url}/v1/flux-kontext-pro", json={"prompt": "x"}).json()
        sample = client.get(task["polling_url"]).json()["result"]["sample"]
        server.state.script("download", "truncate")
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(sample)
        assert stats(server.url)["last_download"] is None
        assert client.get(sample).status_code == 200
        assert stats(server.url)["last_download"] is not None


def test_two_servers_started_alike_draw_the_same_latencies_in_any_order() -> None:
    flags = ("--latency", "0.5", "--jitter", "1.5", "--fault-seed", "9")
    drawn = []
    for prompts in (PROMPTS[:6], PROMPTS[:6][::-1]):
        for base in serving(*flags):
            for prompt in prompts:
                assert httpx.post(f"{base}/v1/flux-kontext-pro", json={"prompt": prompt},
                                  headers=KEY, timeout=10).status_code == 200
            drawn.append({t["prompt"]: t["latency"] for t in stats(base)["tasks"]})
    assert drawn[0] == drawn[1]
    assert all(0.5 <= value <= 2.0 for value in drawn[0].values())
    assert len(set(drawn[0].values())) == 6
