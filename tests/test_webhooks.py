"""Webhook mode: the API pushes each result to the run's receiver, which believes only
notifications signed with the run's secret (either documented form, compared in constant time);
polling slows to a fallback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import pytest

from kontext_pipeline.errors import UsageError
from kontext_pipeline.providers._inbox import Inbox, Pushed, Webhook
from kontext_pipeline.providers.bfl._signing import signature, verify
from kontext_pipeline.runner._webhooks import (
    MAX_NOTIFICATION_BYTES,
    Warnings,
    parse_listen,
    receiving,
)
from kontext_pipeline.server._run import BackgroundServer
from tests.bfl_helpers import KEY
from tests.conftest import RunCli, Start, WriteRecipe, exported_images

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


Post = tuple[str, bytes, dict[str, str]]


def receive(*requests: Post) -> tuple[list[int], list[str], Inbox]:
    """Post each request, over loopback HTTP, to a receiver; the statuses, what it reported,
    and the inbox it delivered to."""
    webhook = Webhook("https://hooks.example/run", secret=SECRET)
    notes: list[str] = []

    async def go() -> list[int]:
        port = free_port()
        async with (receiving(webhook, f"127.0.0.1:{port}", notes.append),
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client):
            return [(await client.request(method, "/run", content=body, headers=headers))
                    .status_code for method, body, headers in requests]

    return asyncio.run(go()), notes, webhook.inbox


def pushed(inbox: Inbox, task_id: str) -> Pushed | None:
    return asyncio.run(inbox.wait(task_id, 0.0))


def test_the_receiver_delivers_verified_notifications_and_reports_the_rest() -> None:
    signed = {"x-bfl-signature": signature(SECRET, BODY)}
    big = b"{" + b" " * MAX_NOTIFICATION_BYTES + b"}"
    junk = b"not json"
    deep = b"[" * 100_000
    statuses, refused, inbox = receive(
        ("POST", BODY, signed), ("POST", BODY, {}), ("POST", BODY, {"x-webhook-secret": "guess"}),
        ("POST", big, {"x-bfl-signature": signature(SECRET, big)}),
        ("POST", junk, {"x-bfl-signature": signature(SECRET, junk)}),
        ("POST", deep, {"x-bfl-signature": signature(SECRET, deep)}),
        ("POST", b"{}", {"x-bfl-signature": signature(SECRET, b"{}")}), ("GET", b"", {}))
    assert statuses == [200, 401, 401, 413, 400, 400, 400, 405]
    assert refused == [
        "webhook: refused a notification from 127.0.0.1: it is not signed (no x-bfl-signature "
        "or x-webhook-secret header)",
        "webhook: refused a notification from 127.0.0.1: its x-webhook-secret does not match",
        f"webhook: refused a notification from 127.0.0.1: it is larger than "
        f"{MAX_NOTIFICATION_BYTES} bytes",
        "webhook: refused a notification from 127.0.0.1: it is not a JSON object",
        "webhook: refused a notification from 127.0.0.1: it is not a JSON object",
        "webhook: in all, 6 notifications refused; 1 of these warnings were not shown"]
    assert not [line for line in refused if SECRET in line or "guess" in line]
    assert pushed(inbox, "t1") == Pushed(json.loads(BODY))


def test_the_secret_header_proves_the_sender_not_the_body() -> None:
    forged = b'{"id": "t2", "status": "Ready", "result": {"sample": "http://127.0.0.1:9/x.png"}}'
    statuses, refused, inbox = receive(
        ("POST", forged, {"x-webhook-secret": SECRET}),
        ("POST", BODY, {"x-webhook-secret": SECRET, "x-bfl-signature": signature(SECRET, BODY)}))
    assert statuses == [200, 200]
    assert refused == []
    assert pushed(inbox, "t2") == Pushed(None)  # a hint: the task polls the API now
    assert pushed(inbox, "t1") == Pushed(json.loads(BODY))  # the HMAC proves this body


def test_a_proven_status_is_not_replaced_by_a_hint() -> None:
    inbox = Inbox()
    inbox.deliver("t1", json.loads(BODY))
    inbox.hint("t1")
    inbox.deliver("t3", {"id": "t3", "status": ["Ready"]})  # no status: only a hint
    assert pushed(inbox, "t1") == Pushed(json.loads(BODY))
    assert pushed(inbox, "t3") == Pushed(None)
    assert pushed(inbox, "t4") is None


def test_warnings_are_rate_limited() -> None:
    now = [0.0]
    notes: list[str] = []
    warnings = Warnings(notes.append, burst=5, every=60.0, clock=lambda: now[0])
    for number in range(200):
        warnings.warn(f"line {number}")
    assert notes == [f"line {number}" for number in range(5)]
    assert warnings.held == 195
    now[0] = 60.0
    warnings.warn("a minute later")
    warnings.warn("and another")
    assert notes[5:] == ["a minute later"]
    assert warnings.held == 196


def test_a_flood_of_forged_posts_gives_a_few_lines_and_a_count() -> None:
    body = json.dumps({"id": "t1", "status": "Ready",
                       "result": {"sample": "http://127.0.0.1:9/forged.png"}}).encode()
    forged: Post = ("POST", body, {"x-bfl-signature": signature("guessed", body)})
    statuses, notes, inbox = receive(*[forged] * 200)
    assert statuses == [401] * 200
    shown = [line for line in notes if line.startswith("webhook: refused a notification")]
    assert 1 <= len(shown) <= 10
    assert set(shown) == {"webhook: refused a notification from 127.0.0.1: its x-bfl-signature "
                          "does not match"}
    assert notes[len(shown):] == [f"webhook: in all, 200 notifications refused; {200 - len(shown)} "
                                  "of these warnings were not shown"]
    assert pushed(inbox, "t1") is None


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


def forge_while_running(server: BackgroundServer, port: int,
                        knows_secret: bool) -> threading.Thread:
    """Once the server has accepted a task, post forged notifications for it to the run: a
    mis-signed one, an unsigned one and, if ``knows_secret``, one with the run's secret in
    ``X-Webhook-Secret`` (as anyone who saw a notification in transit could send)."""

    def forge() -> None:
        for _ in range(6000):  # up to a minute: a loaded machine starts the run late
            if server.state.tasks:
                break
            threading.Event().wait(0.01)
        task_id = next(iter(server.state.tasks))
        body = json.dumps({"id": task_id, "status": "Ready",
                           "result": {"sample": "http://127.0.0.1:9/forged.png"}}).encode()
        url = f"http://127.0.0.1:{port}/hook"
        httpx.post(url, content=body, headers={"x-bfl-signature": signature("guessed", body)})
        httpx.post(url, content=body)
        if knows_secret:
            secret = next(r.body["webhook_secret"] for r in server.state.requests
                          if r.method == "POST" and r.body)
            assert httpx.post(url, content=body,
                              headers={"x-webhook-secret": secret}).status_code == 200

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
    forging = forge_while_running(server, port, knows_secret=form == "secret")
    result = run_cli("run", str(recipe), "--api-base", server.url, "--cache-dir",
                     str(work / "cache"), "--out", str(work / "pushed"), "--webhook-url",
                     f"http://127.0.0.1:{port}/hook", "--webhook-listen", f"127.0.0.1:{port}",
                     env={"BFL_API_KEY": KEY})
    forging.join()
    assert result.exit_code == 0, result.output
    polls = server.state.paths("GET").count("/eu4/v1/get_result")
    if form == "hmac":
        assert polls == 0  # an HMAC proves the body: its status is used as is
    else:  # the secret header proves no body: each task polls when told, and the forged
        assert polls >= 6  # result (a URL no server answers) was never used
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


@pytest.mark.parametrize(("listen", "shown"), [
    ("127.0.0.1:８０８０", "'127.0.0.1:８０８０'"),  # fullwidth digits  # noqa: RUF001
    ("127.0.0.1:٨٠٨٠", "'127.0.0.1:٨٠٨٠'"),  # Arabic-Indic digits
    ("127.0.0.1:²", "'127.0.0.1:²'"),  # int() refuses this one: a traceback, once
    ("１２７.0.0.1:8080", "'１２７.0.0.1:8080'"),  # noqa: RUF001
    ("127.0.0.1:80\x1b[2J", "'127.0.0.1:80\\x1b[2J'"),
    ("local host:8080", "'local host:8080'"),
])
def test_a_listen_address_is_plain_ascii(listen: str, shown: str, run_cli: RunCli,
                                         write_recipe: WriteRecipe) -> None:
    result = run_cli("run", str(write_recipe(RECIPE)), "--provider", "preview", "--frozen",
                     "--webhook-url", "http://127.0.0.1/hook", "--webhook-listen", listen)
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"kontext-pipeline: --webhook-listen {shown} is not HOST:PORT (for "
                             "example 0.0.0.0:8080): write it in plain ASCII letters and digits\n")


@pytest.mark.parametrize(("listen", "address"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:8080", ("::1", 8080)),
    ("localhost:65535", ("localhost", 65535))])
def test_a_listen_address(listen: str, address: tuple[str, int]) -> None:
    assert parse_listen(listen) == address


@pytest.mark.parametrize("listen", ["::1:8080", "[::1]", "127.0.0.1:0", "127.0.0.1:65536",
                                    ":8080", "127.0.0.1:"])
def test_not_a_listen_address(listen: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_listen(listen)
    assert str(raised.value) == (f"--webhook-listen '{listen}' is not HOST:PORT (for example "
                                 "0.0.0.0:8080)")
