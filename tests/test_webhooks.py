"""Webhook mode: the API pushes each result to the run's receiver, which believes only
notifications signed with the run's secret (either documented form, compared in constant time);
polling slows to a fallback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable

import httpx
import pytest

from kontext_pipeline.providers.inbox import Inbox, Webhook
from kontext_pipeline.server.run import BackgroundServer
from kontext_pipeline.webhooks import MAX_NOTIFICATION_BYTES, WebhookReceiver, signature, verify
from tests.bfl_helpers import KEY
from tests.conftest import RunCli, WriteRecipe, exported_images

Start = Callable[..., BackgroundServer]
SECRET = "s3cr3t-of-this-run"  # noqa: S105  (a test value)
BODY = b'{"id": "t1", "status": "Ready", "result": {"sample": "https://x/y.png"}}'


def test_both_documented_signature_forms_are_accepted() -> None:
    assert verify(SECRET, BODY, {"x-bfl-signature": signature(SECRET, BODY)}) is None
    bare = signature(SECRET, BODY).removeprefix("sha256=")
    assert verify(SECRET, BODY, {"x-bfl-signature": bare}) is None
    assert verify(SECRET, BODY, {"x-webhook-secret": SECRET}) is None


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "it is not signed (no x-bfl-signature or x-webhook-secret header)"),
    ({"x-bfl-signature": signature("another secret", BODY)},
     "its x-bfl-signature does not match"),
    ({"x-bfl-signature": signature(SECRET, BODY + b" ")}, "its x-bfl-signature does not match"),
    ({"x-bfl-signature": "sha256=" + "0" * 64}, "its x-bfl-signature does not match"),
    ({"x-webhook-secret": SECRET[:-1]}, "its x-webhook-secret does not match"),
    ({"x-webhook-secret": "é" + SECRET}, "its x-webhook-secret does not match"),
])
def test_anything_else_is_refused(headers: dict[str, str], why: str) -> None:
    assert verify(SECRET, BODY, headers) == why


def receive(*requests: tuple[str, bytes, dict[str, str]]) -> tuple[list[int], list[str], Inbox]:
    """Post each request to a receiver; the statuses, what it reported, what it delivered."""
    webhook = Webhook("https://hooks.example/run", secret=SECRET)
    refused: list[str] = []
    app = WebhookReceiver(webhook, refused.append)

    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
            return [(await client.request(method, "/run", content=body, headers=headers))
                    .status_code for method, body, headers in requests]

    return asyncio.run(go()), refused, webhook.inbox


def test_the_receiver_delivers_verified_notifications_and_reports_the_rest() -> None:
    signed = {"x-bfl-signature": signature(SECRET, BODY)}
    big = b"{" + b" " * MAX_NOTIFICATION_BYTES + b"}"
    junk = b"not json"
    statuses, refused, inbox = receive(
        ("POST", BODY, signed), ("POST", BODY, {}), ("POST", BODY, {"x-webhook-secret": "guess"}),
        ("POST", big, {"x-bfl-signature": signature(SECRET, big)}),
        ("POST", junk, {"x-bfl-signature": signature(SECRET, junk)}),
        ("POST", b"{}", {"x-bfl-signature": signature(SECRET, b"{}")}), ("GET", b"", {}))
    assert statuses == [200, 401, 401, 413, 400, 400, 405]
    assert refused == [
        "webhook: refused a notification from 203.0.113.7: it is not signed (no x-bfl-signature "
        "or x-webhook-secret header)",
        "webhook: refused a notification from 203.0.113.7: its x-webhook-secret does not match",
        f"webhook: refused a notification from 203.0.113.7: it is larger than "
        f"{MAX_NOTIFICATION_BYTES} bytes",
        "webhook: refused a notification from 203.0.113.7: it is not a JSON object",
        "webhook: refused a notification from 203.0.113.7: it names no task id"]
    assert not [line for line in refused if SECRET in line or "guess" in line]
    assert asyncio.run(inbox.wait("t1", 0.0)) == json.loads(BODY)


RECIPE = """
    version: 1
    name: pushed
    inputs: {photo: photo.png}
    matrix:
      n: [1, 2, 3]
    steps:
      - {id: paint, image: photo, prompt: "Paint {{ n }} stripes"}
      - {id: frame, prompt: "Frame it"}
    outputs:
      paint: paint
      frame: frame
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def forge_while_running(server: BackgroundServer, port: int) -> threading.Thread:
    """Once the server has accepted a task, post forged notifications for it to the run."""

    def forge() -> None:
        for _ in range(500):
            if server.state.tasks:
                break
            threading.Event().wait(0.01)
        task_id = next(iter(server.state.tasks))
        body = json.dumps({"id": task_id, "status": "Ready",
                           "result": {"sample": "http://127.0.0.1:9/forged.png"}}).encode()
        url = f"http://127.0.0.1:{port}/hook"
        httpx.post(url, content=body, headers={"x-bfl-signature": signature("guessed", body)})
        httpx.post(url, content=body)

    thread = threading.Thread(target=forge)
    thread.start()
    return thread


@pytest.mark.parametrize("form", ["hmac", "secret"])
def test_a_run_completes_from_pushed_results_and_ignores_forgeries(
        form: str, bfl_server: Start, run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    recipe = write_recipe(RECIPE)
    work = recipe.parent
    server = bfl_server(latency=1.0, webhook_signature=form)  # time to forge mid-run
    port = free_port()
    forging = forge_while_running(server, port)
    result = run_cli("run", str(recipe), "--api-base", server.url, "--cache-dir",
                     str(work / "cache"), "--out", str(work / "pushed"), "--webhook-url",
                     f"http://127.0.0.1:{port}/hook", "--webhook-listen", f"127.0.0.1:{port}",
                     env={"BFL_API_KEY": KEY})
    forging.join()
    assert result.exit_code == 0, result.output
    assert server.state.paths("GET").count("/eu4/v1/get_result") == 0  # no poll was needed
    assert [d.status for d in server.state.webhooks] == [200] * 6
    refusals = [line for line in result.stderr.splitlines() if "webhook" in line]
    assert refusals == [
        "warning: webhook: refused a notification from 127.0.0.1: its x-bfl-signature does not "
        "match",
        "warning: webhook: refused a notification from 127.0.0.1: it is not signed (no "
        "x-bfl-signature or x-webhook-secret header)"]
    submitted = [r.body for r in server.state.requests if r.method == "POST" and r.body]
    assert {b["webhook_url"] for b in submitted} == {f"http://127.0.0.1:{port}/hook"}
    assert len({b["webhook_secret"] for b in submitted}) == 1  # one secret for the run...
    assert submitted[0]["webhook_secret"] not in result.output  # ...shown nowhere

    plain = bfl_server(latency=0.05)
    polled = run_cli("run", str(recipe), "--api-base", plain.url, "--cache-dir",
                     str(work / "cache-plain"), "--out", str(work / "polled"),
                     env={"BFL_API_KEY": KEY})
    assert polled.exit_code == 0
    assert exported_images(work / "pushed") == exported_images(work / "polled")


@pytest.mark.parametrize(("args", "message"), [
    (("--webhook-url", "https://hooks.example/run"),
     "--webhook-url and --webhook-listen go together: the API pushes to the URL, and the run "
     "receives on HOST:PORT"),
    (("--webhook-url", "ftp://hooks.example", "--webhook-listen", "127.0.0.1:8080"),
     "--webhook-url 'ftp://hooks.example' is not an http(s) URL the API can post to (at most "
     "2083 characters)"),
    (("--webhook-url", "https://hooks.example/run", "--webhook-listen", "8080"),
     "--webhook-listen '8080' is not HOST:PORT (for example 0.0.0.0:8080)"),
])
def test_webhook_options_are_checked_before_anything_runs(
        args: tuple[str, ...], message: str, run_cli: RunCli, write_recipe: WriteRecipe) -> None:
    result = run_cli("run", str(write_recipe(RECIPE)), *args, env={"BFL_API_KEY": KEY})
    assert result.exit_code == 2
    assert result.stderr == f"kontext-pipeline: {message}\n"


def test_a_port_that_is_taken_is_a_clear_error(run_cli: RunCli,
                                               write_recipe: WriteRecipe) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("run", str(write_recipe(RECIPE)), "--provider", "preview",
                         "--webhook-url", "http://127.0.0.1/hook", "--webhook-listen",
                         f"127.0.0.1:{port}")
    assert result.exit_code == 2
    assert result.stderr == (f"kontext-pipeline: cannot listen for webhooks on 127.0.0.1:{port}: "
                             "Address already in use; choose another --webhook-listen\n")
